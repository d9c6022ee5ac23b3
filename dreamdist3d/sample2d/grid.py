"""Image grids of sampling runs: `labelled_grid` and `contact_sheet` live in `dreamdist3d.images` (the one grid
writer); this module keeps their old import path."""

from dreamdist3d.images import cell_size, contact_sheet, labelled_grid

__all__ = ["cell_size", "contact_sheet", "labelled_grid"]
