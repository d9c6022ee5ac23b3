"""dreamdist3d: DreamDistribution prompt distributions for MVDream, SD 2.1 and multi-view SDS text-to-3D."""

__version__ = "0.1.0"
