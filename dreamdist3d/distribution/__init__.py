"""dreamdist3d.distribution"""
