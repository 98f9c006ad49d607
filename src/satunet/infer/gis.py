"""How predict's GeoTIFFs look in QGIS/ArcGIS: colour table, class names, units and no-data.

The class raster (uint8, no-data 255) gets the checkpoint's palette as its colour table (QGIS
opens it with the "Paletted/Unique values" renderer in the model's colours), its class names as
GDAL category names and as a raster attribute table (Value, class_name, Red, Green, Blue,
Alpha) in a PAM sidecar ``NAME.tif.aux.xml`` (GeoTIFF tags cannot hold either; GDAL, QGIS and
ArcGIS read the sidecar), and the names again as band metadata ``class_0=...`` (in the TIFF
itself, so rasterio and ``gdalinfo`` show them without the sidecar).

The probability raster holds one uint8 band per class named after it, ``round(p * 254)`` with
GDAL scale 1/254 (so "unscaled" values are probabilities) and no-data 255 where the input was
no-data.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from satunet.checkpoint import ModelInfo
from satunet.data.geotiff import RasterStyle
from satunet.infer.engine import NODATA

PROBABILITY_MAX = 254  # p = 1 is stored as 254; 255 is no-data
NODATA_RGBA = (0, 0, 0, 0)  # transparent

# GDAL's raster attribute table field types and usages (gdal.h: GDALRATFieldType/Usage).
_INTEGER, _STRING = 0, 2
_MIN_MAX, _NAME, _RED, _GREEN, _BLUE, _ALPHA = 5, 2, 6, 7, 8, 9
_RAT_FIELDS = (
    ("Value", _INTEGER, _MIN_MAX),
    ("class_name", _STRING, _NAME),
    ("Red", _INTEGER, _RED),
    ("Green", _INTEGER, _GREEN),
    ("Blue", _INTEGER, _BLUE),
    ("Alpha", _INTEGER, _ALPHA),
)


def class_colormap(info: ModelInfo) -> dict[int, tuple[int, int, int, int]]:
    """Value -> RGBA: the model's palette for its classes, transparent for no-data."""
    colours = info.colours()[: info.num_classes]
    table = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(colours)}
    table[NODATA] = NODATA_RGBA
    return table


def class_aux_xml(info: ModelInfo) -> str:
    """A GDAL PAM document with band 1's category names and raster attribute table."""
    names = info.class_names()
    categories = "".join(f"<Category>{escape(n)}</Category>" for n in names)
    fields = "".join(
        f'<FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type>'
        f"<Usage>{usage}</Usage></FieldDefn>"
        for i, (name, kind, usage) in enumerate(_RAT_FIELDS)
    )
    rows = "".join(
        f'<Row index="{i}"><F>{i}</F><F>{escape(name)}</F>'
        + "".join(f"<F>{v}</F>" for v in (*colour, 255))
        + "</Row>"
        for i, (name, colour) in enumerate(zip(names, info.colours(), strict=False))
    )
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n'
        f"    <CategoryNames>{categories}</CategoryNames>\n"
        f'    <GDALRasterAttributeTable tableType="thematic">{fields}{rows}'
        "</GDALRasterAttributeTable>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def class_style(info: ModelInfo) -> RasterStyle:
    """Colour table, band name, class-name metadata and the PAM sidecar of a class raster."""
    names = info.class_names()
    return RasterStyle(
        colormap=class_colormap(info),
        descriptions=("class",),
        tags={f"class_{i}": name for i, name in enumerate(names)},
        aux_xml=class_aux_xml(info),
    )


def probability_style(info: ModelInfo) -> RasterStyle:
    """Band names (the classes) and the 1/254 scale of a probability raster."""
    names = info.class_names()
    return RasterStyle(
        descriptions=tuple(names),
        scales=(1 / PROBABILITY_MAX,) * len(names),
    )
