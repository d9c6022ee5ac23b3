"""dreamdist3d.lift3d"""
