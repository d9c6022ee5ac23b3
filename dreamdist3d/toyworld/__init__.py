"""dreamdist3d.toyworld"""
