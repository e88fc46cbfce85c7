"""The mapper: each side's tree becomes a canonical tree of lazy views, so the two sides pair by path.

`patterns` (the path language), `views` (lazy tensorstore views of stored arrays), `rules` (rules
files and applying them), `layouts` (detected model layouts, their presets in `presets/`, alignment of
scanned and unscanned layers) and `stage` (`map_trees`, the stage as the driver calls it).
"""
