"""dreamdist3d.backbones"""
