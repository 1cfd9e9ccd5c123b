"""Active learning: frame selection, configuration errors, and one iteration end to end with tblite."""

import csv
import json

import numpy as np
import openmm.app as app
import openmm.unit as unit
import pytest
import yaml

from hybridpot.active.loop import ActiveLearner, load_active_config, resolve_active_config
from hybridpot.active.selection import select_frames
from hybridpot.data import Frame, read_extxyz


# ---------------------------------------------------------------------------------------------- selection
def test_selection_prefers_diverse_frames_over_a_cluster_of_neighbors():
    rng = np.random.default_rng(0)
    cluster = np.array([1.0, 0.0, 0.0]) + 1e-3 * rng.normal(size=(40, 3))  # 40 nearly identical snapshots
    distinct = np.array([[0, 5, 0], [0, -5, 0], [0, 0, 5], [0, 0, -5], [5, 5, 5]], dtype=float)
    prints = np.vstack([cluster, distinct])
    scores = np.concatenate([np.linspace(300, 250, 40), np.full(5, 120.0)])
    chosen = select_frames(scores, prints, threshold=100.0, max_frames=5)
    assert chosen[0] == 0  # the most uncertain frame first
    assert sum(c < 40 for c in chosen) == 1  # one representative of the cluster, not five neighbors
    assert len({c for c in chosen if c >= 40}) == 4  # and four of the five distinct structures


def test_selection_respects_threshold_and_upper_bound():
    scores = np.array([50.0, 150.0, 99.9, 100.0, 2000.0, 180.0, np.nan])
    prints = np.arange(14, dtype=float).reshape(7, 2)
    chosen = select_frames(scores, prints, threshold=100.0, max_frames=10, upper=1000.0)
    assert chosen == [5, 1]  # strictly above 100, not above 1000, NaN ignored, most uncertain first
    assert select_frames(scores, prints, threshold=100.0, max_frames=10) == [4, 5, 1]
    assert select_frames(scores, prints, threshold=5000.0, max_frames=10) == []
    with pytest.raises(ValueError, match="fingerprints"):
        select_frames(scores, prints[:3], threshold=1.0, max_frames=2)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="structures is required"):
        resolve_active_config({"active_learning": {}})
    pdb = tmp_path / "x.pdb"
    pdb.write_text("END\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) active_learning.md.temprature"):
        resolve_active_config({"active_learning": {"structures": [str(pdb)], "md": {"temprature": 300}}})
    with pytest.raises(ValueError, match="missing.pdb' does not exist"):
        resolve_active_config({"active_learning": {"structures": ["missing.pdb"]}}, tmp_path)
    with pytest.raises(ValueError, match="temperatures must be positive"):
        resolve_active_config({"active_learning": {"structures": [str(pdb)], "md": {"temperatures": [-5]}}})
    with pytest.raises(ValueError, match="upper .* must exceed threshold"):
        resolve_active_config({"active_learning": {"structures": [str(pdb)], "selection": {"upper": 10.0}}})


# ---------------------------------------------------------------------------------------------- end to end
WATER_DIMER_A = np.array([  # Angstrom: a hydrogen-bonded water dimer
    [0.000, 0.000, 0.000], [0.957, 0.000, 0.000], [-0.240, 0.927, 0.000],
    [2.900, 0.000, 0.000], [3.240, 0.900, 0.000], [3.240, -0.450, 0.780],
])
NUMBERS = np.array([8, 1, 1, 8, 1, 1])


def _write_dimer_pdb(path):
    top = app.Topology()
    chain = top.addChain()
    for _ in range(2):
        res = top.addResidue("HOH", chain)
        top.addAtom("O", app.Element.getBySymbol("O"), res)
        top.addAtom("H1", app.Element.getBySymbol("H"), res)
        top.addAtom("H2", app.Element.getBySymbol("H"), res)
    with open(path, "w") as handle:
        app.PDBFile.writeFile(top, WATER_DIMER_A * 0.1 * unit.nanometer, handle)


@pytest.fixture(scope="module")
def al_run(tmp_path_factory):
    from hybridpot.active.oracles import TBLiteOracle
    from hybridpot.data import write_extxyz

    root = tmp_path_factory.mktemp("al")
    rng = np.random.default_rng(1)
    frames = [Frame(atomic_numbers=NUMBERS, positions=WATER_DIMER_A * 0.1 + 0.006 * rng.normal(size=(6, 3)))
              for _ in range(16)]
    report = TBLiteOracle().label_many(frames, progress=False)
    assert not report.failures
    write_extxyz(report.frames, root / "initial.xyz")
    _write_dimer_pdb(root / "dimer.pdb")
    config = {
        "data": {"path": "initial.xyz", "split": [0.75, 0.25, 0.0]},
        "model": {"cutoff": 0.5, "behler_parrinello": {"hidden": [8], "n_radial": 4, "n_angular": 2}},
        "training": {"epochs": 60, "batch_size": 4, "ensemble_size": 2, "progress": False, "plots": False,
                     "lr": 5e-3},
        "active_learning": {
            "iterations": 1,
            "structures": ["dimer.pdb"],
            "md": {"temperatures": [100.0], "trajectories": 1, "steps": 200, "sample_interval": 10,
                   "minimize_steps": 0, "backend": "pythonforce"},
            "selection": {"threshold": 0.0, "max_frames": 3},
        },
    }
    (root / "al.yaml").write_text(yaml.safe_dump(config))
    config = load_active_config(root / "al.yaml")
    lines = []
    learner = ActiveLearner(config, root / "out", log=lines.append)
    scores = learner.explore(0)  # trains iteration 0's ensemble, then MD
    (name,) = scores
    values = scores[name].max_force_std
    # a threshold that splits the explored frames, set before selection (a resumed run picks it up)
    threshold = float(np.median(values))
    learner.al["selection"]["threshold"] = threshold
    rows = learner.run()
    return dict(root=root, out=root / "out", learner=learner, rows=rows, values=values, threshold=threshold,
                run=name, lines=lines)


def _member_force_spread(ensemble_path, positions):
    """max_i sqrt(mean_k |F_k,i - mean_k F_k,i|^2), computed member by member (not by EnsembleModel)."""
    from hybridpot.model import load_model

    members = load_model(ensemble_path).members
    forces = np.stack([m.compute(positions, NUMBERS)["forces"].double().numpy() for m in members])
    spread = forces - forces.mean(0)
    return float(np.sqrt((spread**2).sum(-1).mean(0)).max())


def test_one_iteration_selects_the_uncertain_frames(al_run):
    import mdtraj

    out = al_run["out"] / "iter_000"
    with open(out / "candidates.csv") as handle:
        rows = list(csv.DictReader(handle))
    traj = mdtraj.load_dcd(str(out / "md" / al_run["run"] / "trajectory.dcd"), top=str(al_run["root"] / "dimer.pdb"))
    assert len(rows) == traj.n_frames == 20
    recomputed = np.array([_member_force_spread(out / "train" / "ensemble.pt", traj.xyz[k].astype(float))
                           for k in range(traj.n_frames)])
    listed = np.array([float(r["max_force_std_kj_mol_nm"]) for r in rows])
    np.testing.assert_allclose(listed, recomputed, rtol=1e-4, atol=1e-6)
    selected = [int(r["frame"]) for r in rows if r["selected"] == "1"]
    above = np.flatnonzero(recomputed > al_run["threshold"])
    assert len(above) >= 3 and len(selected) == 3
    assert set(selected) <= set(above.tolist())  # only frames above the threshold
    assert int(np.argmax(recomputed)) in selected  # and the most uncertain one
    chosen = read_extxyz(out / "selected.xyz")
    assert len(chosen) == 3
    for frame in chosen:  # selected.xyz holds exactly those MD frames (in selection order)
        matches = [k for k in selected if np.allclose(frame.positions, traj.xyz[k], atol=1e-6)]
        assert len(matches) == 1


def test_data_grew_and_the_new_model_loads(al_run):
    from hybridpot.ensemble import EnsembleModel
    from hybridpot.model import load_model

    out = al_run["out"]
    initial = read_extxyz(out / "iter_000" / "data.xyz")
    labelled = read_extxyz(out / "iter_000" / "labelled.xyz")
    final = read_extxyz(out / "final" / "data.xyz")
    assert len(initial) == 16 and len(labelled) == 3 and len(final) == 19
    for frame in labelled:
        assert frame.energy is not None and np.all(np.isfinite(frame.forces))
        assert abs(frame.charges.sum()) < 1e-6  # tblite charges of the neutral dimer
    model = load_model(out / "final" / "ensemble.pt")
    assert isinstance(model, EnsembleModel) and model.n_members == 2
    result = model.compute(labelled[0].positions, NUMBERS)
    assert np.isfinite(float(result["energy"])) and float(result["forces_std"].max()) > 0
    summary = json.loads((out / "iter_000" / "summary.json").read_text())
    assert summary["n_data"] == 16 and summary["n_selected"] == 3 and summary["n_labelled"] == 3
    assert summary["fraction_uncertain"] == pytest.approx(np.mean(al_run["values"] > al_run["threshold"]))
    with open(out / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["iteration"] == "0" and row["n_data"] == "16" and row["n_labelled"] == "3"


def test_a_second_run_resumes_without_redoing_work(al_run):
    out = al_run["out"]
    labels = sorted((out / "iter_000" / "labels").glob("*.xyz"))
    stamps = [p.stat().st_mtime_ns for p in labels]
    lines = []
    ActiveLearner(load_active_config(al_run["root"] / "al.yaml"), out, log=lines.append).run()
    assert [p.stat().st_mtime_ns for p in labels] == stamps  # nothing relabelled
    assert any("trained earlier" in line for line in lines)  # the final ensemble is not retrained
    assert not any(line.startswith("member") and "training" in line and "earlier" not in line for line in lines)
