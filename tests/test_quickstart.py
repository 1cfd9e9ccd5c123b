"""The README's main job runs end to end and meets the error limits the README states."""

import json

from hybridpot.quickstart import ENERGY_MAE_LIMIT_MEV_ATOM, FORCE_MAE_LIMIT_MEV_A, run_quickstart


def test_quickstart_end_to_end(tmp_path):
    # a shorter training budget than the default 2.5 min keeps the suite fast; the limits are the same
    assert run_quickstart(output=str(tmp_path), steps=200, minutes=1.5) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_force_mae_mev_per_A"] < FORCE_MAE_LIMIT_MEV_A
    assert summary["test_energy_mae_mev_per_atom"] < ENERGY_MAE_LIMIT_MEV_ATOM
    # OpenMM evaluates the same model: same energy
    assert abs(summary["openmm_energy_kj_mol"] - summary["model_energy_kj_mol"]) < 1e-3
    # NVE with 0.25 fs conserves energy: |drift| well below 1 kJ/mol/ps per atom
    assert abs(summary["nve_drift_kj_mol_ps_atom"]) < 0.5
    for name in ("model.pt", "metrics.csv", "learning_curve.png", "parity.png"):
        assert (tmp_path / name).is_file(), name
