"""dreamdist3d.learn"""
