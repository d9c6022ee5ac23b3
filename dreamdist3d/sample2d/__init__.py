"""dreamdist3d.sample2d"""
