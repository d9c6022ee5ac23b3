"""dreamdist3d.export"""
