"""dreamdist3d.testing: tiny random checkpoints, backbones and assets for tests and examples (not real models).

- checkpoints.py: tiny MVDream-layout checkpoints and SD 2.1 diffusers folders
- backbones.py: tiny text encoder, toy and pixel-space backbones (`module:function` specs for load_backbone)
- assets.py: tiny checkpoint + distribution pairs, reference images, an oracle backbone
- encoders.py: tiny DINOv2 / CLIP / ViT image encoders as local transformers folders
"""
