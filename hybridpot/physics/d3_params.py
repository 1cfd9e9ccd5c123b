"""DFT-D3(BJ) damping parameters: an explicit registry by functional name.

Values are those of the official D3 library's parameter database (``parameters.toml`` shipped with
the ``dftd3`` / s-dftd3 package, entries ``[parameter.<name>] d3.bj``); the original sources are the
DOIs listed. ``tests/unit/physics/test_dispersion.py`` checks every entry against the installed ``dftd3`` package,
so a transcription error fails the test suite.

``a2`` is in bohr, the unit in which the literature tabulates it; :class:`D3Dispersion` converts it to
nm. ``s9`` (the three-body Axilrod-Teller-Muto scaling) is not listed: hybridpot's D3 is two-body only,
i.e. s9 = 0.
"""

from __future__ import annotations

from typing import Dict, NamedTuple


class D3BJParameters(NamedTuple):
    """Becke-Johnson damping parameters of one functional.

    Attributes
    ----------
    s6, s8: scaling of the C6 and C8 terms (dimensionless)
    a1: scaling of the critical radius sqrt(C8/C6) (dimensionless)
    a2: offset of the critical radius, bohr
    doi: where the parameters were published ("" when the D3 database gives none)
    """

    s6: float
    s8: float
    a1: float
    a2: float
    doi: str = ""


_GRIMME_2011 = "10.1002/jcc.21759"
_GOERIGK_2011 = "10.1039/c0cp02984j"

#: Registry of D3(BJ) parameters; keys are lower-case functional names without dashes.
D3BJ_PARAMETERS: Dict[str, D3BJParameters] = {
    "pbe": D3BJParameters(1.0, 0.7875, 0.4289, 4.4407, _GRIMME_2011),
    "revpbe": D3BJParameters(1.0, 2.3550, 0.5238, 3.5016, _GRIMME_2011),
    "rpbe": D3BJParameters(1.0, 0.8318, 0.1820, 4.0094),
    "pbesol": D3BJParameters(1.0, 2.9491, 0.4466, 6.1742, _GOERIGK_2011),
    "blyp": D3BJParameters(1.0, 2.6996, 0.4298, 4.2359, _GRIMME_2011),
    "bp": D3BJParameters(1.0, 3.2822, 0.3946, 4.8516, _GRIMME_2011),
    "b97d": D3BJParameters(1.0, 2.2609, 0.5545, 3.2297, _GRIMME_2011),
    "tpss": D3BJParameters(1.0, 1.9435, 0.4535, 4.4752, _GRIMME_2011),
    "scan": D3BJParameters(1.0, 0.0000, 0.5380, 5.4200, "10.1103/physrevb.94.115144"),
    "r2scan": D3BJParameters(1.0, 0.78981345, 0.49484001, 5.73083694, "10.1063/5.0041008"),
    "b3lyp": D3BJParameters(1.0, 1.9889, 0.3981, 4.4211, _GRIMME_2011),
    "b3pw91": D3BJParameters(1.0, 2.8524, 0.4312, 4.4693, _GOERIGK_2011),
    "pbe0": D3BJParameters(1.0, 1.2177, 0.4145, 4.8593, _GRIMME_2011),
    "revpbe0": D3BJParameters(1.0, 1.7588, 0.4679, 3.7619, _GOERIGK_2011),
    "tpssh": D3BJParameters(1.0, 2.2382, 0.4529, 4.6550, _GOERIGK_2011),
    "pw6b95": D3BJParameters(1.0, 0.7257, 0.2076, 6.3750, _GOERIGK_2011),
    "wb97x": D3BJParameters(1.0, 0.2641, 0.0000, 5.4959),
    "wb97m": D3BJParameters(1.0, 0.3908, 0.5660, 3.1280, "10.1021/acs.jctc.8b00842"),
    "b2plyp": D3BJParameters(0.64, 0.9147, 0.3065, 5.0570, _GOERIGK_2011),
    "hf": D3BJParameters(1.0, 0.9171, 0.3385, 2.8830, _GRIMME_2011),
}

#: Other spellings of registry entries (after lower-casing and removing dashes).
D3BJ_ALIASES: Dict[str, str] = {"bp86": "bp", "pbeh": "pbe0", "b3lyp5": "b3lyp", "ωb97x": "wb97x"}


def d3bj_parameters(functional: str) -> D3BJParameters:
    """D3(BJ) parameters of ``functional`` (case and dashes ignored, e.g. ``"PBE0"``, ``"B2-PLYP"``).

    Raises
    ------
    ValueError
        for a functional that is not in :data:`D3BJ_PARAMETERS`; the message lists the known ones.
    """
    if not isinstance(functional, str):
        raise ValueError(f"functional must be a string, got {type(functional).__name__}")
    key = functional.strip().lower().replace("-", "")
    key = D3BJ_ALIASES.get(key, key)
    if key not in D3BJ_PARAMETERS:
        known = ", ".join(sorted(D3BJ_PARAMETERS))
        raise ValueError(f"unknown functional {functional!r} for D3(BJ); known functionals: {known}")
    return D3BJ_PARAMETERS[key]
