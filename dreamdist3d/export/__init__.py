"""dreamdist3d.export: textured meshes (OBJ+MTL+PNG, GLB, PLY) from a density/albedo field, on CPU.

Entry point: `export_field(field, out_dir, formats, **ExportConfig keys)`; the field protocol is in `field.py`.
"""

from dreamdist3d.export.field import (
    ANALYTIC_FIELDS,
    BoxField,
    Field,
    SphereField,
    TwoPartField,
    check_field,
    make_analytic_field,
)
from dreamdist3d.export.isosurface import ExportError, extract_isosurface
from dreamdist3d.export.pipeline import FORMATS, ExportConfig, ExportResult, export_field, parse_formats
from dreamdist3d.export.transform import ExportTransform

__all__ = [
    "ANALYTIC_FIELDS",
    "BoxField",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ExportTransform",
    "FORMATS",
    "Field",
    "SphereField",
    "TwoPartField",
    "check_field",
    "export_field",
    "extract_isosurface",
    "make_analytic_field",
    "parse_formats",
]
