"""Physics data for X-ray image formation: material compositions, attenuation tables, spectra."""

from jaxdrr.physics.attenuation import (
    AttenuationTable,
    EnergyRangeError,
    air_mass_energy_absorption,
    available_materials,
    linear_attenuation,
    load_table,
    mass_attenuation,
)
from jaxdrr.physics.compositions import (
    COMPOSITIONS,
    Composition,
    UnknownMaterialError,
    composition,
    density,
    material_names,
)
from jaxdrr.physics.spectra import (
    Spectrum,
    SpectrumError,
    bin_edges,
    default_spectrum,
    filter_spectrum,
    first_hvl_mm_al,
    from_arrays,
    ipem78,
    mean_energy,
    rebin,
    spekpy_spectrum,
)

__all__ = [
    "AttenuationTable",
    "EnergyRangeError",
    "air_mass_energy_absorption",
    "available_materials",
    "linear_attenuation",
    "load_table",
    "mass_attenuation",
    "COMPOSITIONS",
    "Composition",
    "UnknownMaterialError",
    "composition",
    "density",
    "material_names",
    "Spectrum",
    "SpectrumError",
    "bin_edges",
    "default_spectrum",
    "filter_spectrum",
    "first_hvl_mm_al",
    "from_arrays",
    "ipem78",
    "mean_energy",
    "rebin",
    "spekpy_spectrum",
]
