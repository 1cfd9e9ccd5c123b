"""The README's main job runs end to end and meets the error limits the README states."""

import json

from hybridpot.quickstart import ENERGY_MAE_LIMIT_MEV_ATOM, FORCE_MAE_LIMIT_MEV_A, run_quickstart


def test_quickstart_end_to_end(tmp_path):
    # a shorter training budget than the default 2.5 min keeps the suite fast; the limits are the same
    assert run_quickstart(output=str(tmp_path), steps=200, minutes=1.5, hybrid_minutes=0.5, hybrid_steps=200) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_force_mae_mev_per_A"] < FORCE_MAE_LIMIT_MEV_A
    assert summary["test_energy_mae_mev_per_atom"] < ENERGY_MAE_LIMIT_MEV_ATOM
    # OpenMM evaluates the same model: same energy
    assert abs(summary["openmm_energy_kj_mol"] - summary["model_energy_kj_mol"]) < 1e-3
    # NVE with 0.25 fs conserves energy: |drift| well below 1 kJ/mol/ps per atom
    assert abs(summary["nve_drift_kj_mol_ps_atom"]) < 0.5
    for name in ("model.pt", "metrics.csv", "learning_curve.png", "parity.png"):
        assert (tmp_path / name).is_file(), name
    # the hybrid stage: OpenMM = model, the ions keep their integer charges, the terms add up
    hybrid = summary["hybrid"]
    # ~8.4e5 kJ/mol summed in another order (float32 model): equal to 1e-8 relative
    assert abs(hybrid["openmm_energy_kj_mol"] - hybrid["model_energy_kj_mol"]) < 1e-8 * abs(hybrid["model_energy_kj_mol"])
    assert abs(hybrid["na_charge_e"] - 1.0) < 1e-4 and abs(hybrid["cl_charge_e"] + 1.0) < 1e-4
    terms = hybrid["terms_kj_mol"]
    assert set(terms) == {"mlp", "elec", "disp"} and terms["disp"] < 0
    assert abs(sum(terms.values()) - hybrid["model_energy_kj_mol"]) < 1e-2
    assert abs(hybrid["nve_drift_kj_mol_ps_atom"]) < 0.5 and 0.7 < hybrid["density_end_g_cm3"] < 1.4
    assert all(summary["checks"].values())
