"""The ASE calculator (hybridpot.ase): forces and stress against finite differences of its own energy
(a molecule and a triclinic box with the full hybrid model: NN charges, PME, D3), agreement with
``model.compute`` in ASE's units, charges, dipole, uncertainty extras and charge keys of
``atoms.info``, a BFGS relaxation with a trained model, and energy conservation in ASE's NVE."""

import copy

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.stress import voigt_6_to_full_3x3_stress

import hybridpot
from hybridpot.ase import HybridpotCalculator
from hybridpot.ensemble import EnsembleModel
from hybridpot.units import KJ_PER_MOL_PER_EV

SMALL = {"hidden": [8], "n_radial": 4, "n_angular": 2}
#: NaCl and 25 waters in a triclinic cell (Angstrom, lattice vectors as rows). Every box height exceeds
#: 1.6 nm, so PME keeps its default 0.8 nm real-space cutoff: in smaller cells the cutoff is half the
#: shortest height, the Ewald splitting follows the cell, and FD and autograd stresses differ at the
#: level of the requested PME accuracy (1e-5 relative).
CELL = np.array([[17.0, 0.0, 0.0], [2.5, 16.5, 0.0], [-2.0, 2.5, 17.0]])


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def model(elements, seed=0, **config):
    torch.manual_seed(seed)
    cfg = {"elements": elements, "dtype": "float64", "energy_scale": 10.0, "behler_parrinello": SMALL}
    cfg.update(config)
    return hybridpot.build_model(cfg)


def full_periodic_model(seed=0):
    return model(["H", "O", "Na", "Cl"], seed, periodic=True, charges={"enabled": True},
                 electrostatics={"enabled": True, "method": "pme"}, dispersion={"enabled": True})


def ethanol():
    return molecule("CH3CH2OH")


def salt_water_box():
    """Na+ and Cl- (fragment charges +1, -1, as atoms.arrays / atoms.info carry them) and 25 waters on
    a 3x3x3 grid of sites ~5.7 A apart, each water randomly rotated."""
    rng = np.random.default_rng(1)
    atoms = Atoms(cell=CELL, pbc=True)
    sites = [np.array([a, b, c]) / 3 + 1 / 6 for a in range(3) for b in range(3) for c in range(3)]
    for k, site in enumerate(sites):
        piece = Atoms("Na" if k == 0 else "Cl") if k < 2 else molecule("H2O")
        piece.rotate(rng.uniform(0, 360), rng.normal(size=3))
        piece.translate(site @ CELL + rng.normal(scale=0.1, size=3))
        atoms += piece
    atoms.arrays["fragment"] = np.array([0, 1] + [2 + k // 3 for k in range(75)])
    atoms.info["fragment_charges"] = np.array([1.0, -1.0] + [0.0] * 25)
    return atoms


def energy_at(atoms, positions=None, cell=None):
    probe = atoms.copy()
    if cell is not None:
        probe.set_cell(cell, scale_atoms=True)
    if positions is not None:
        probe.positions = positions
    probe.calc = atoms.calc
    return probe.get_potential_energy()


def fd_forces(atoms, indices, h=1e-4):
    forces = np.zeros((len(indices), 3))
    for n, i in enumerate(indices):
        for d in range(3):
            plus, minus = atoms.positions.copy(), atoms.positions.copy()
            plus[i, d] += h
            minus[i, d] -= h
            forces[n, d] = -(energy_at(atoms, plus) - energy_at(atoms, minus)) / (2 * h)
    return forces


# --- forces and stress are derivatives of the energy --------------------------------------------------
@pytest.mark.parametrize("system", ["molecule", "periodic box"])
def test_forces_are_finite_differences_of_the_energy(system):
    if system == "molecule":
        atoms = ethanol()
        atoms.calc = HybridpotCalculator(model(["H", "C", "O"], charges={"enabled": True},
                                               electrostatics={"enabled": True}, dispersion={"enabled": True}))
    else:
        atoms = salt_water_box()
        atoms.calc = HybridpotCalculator(full_periodic_model())
    indices = range(min(len(atoms), 14))  # the ions and four waters of the box
    forces = atoms.get_forces()[indices]
    error = np.abs(forces - fd_forces(atoms, indices)).max()
    print(f"{system}: max |F - F_fd| = {error:.2e} eV/A, max |F| = {np.abs(forces).max():.3f} eV/A")
    assert error < 1e-7 * np.abs(forces).max() + 1e-9


def test_stress_is_the_strain_derivative_in_a_triclinic_box_with_pme_and_d3():
    """stress_ab = (1/V) dE/d(eps_ab) with positions and cell scaled by I + eps (eps symmetric), checked by
    central differences of the calculator's energy; the Coulomb energy of the +1/-1 ions is large."""
    atoms = salt_water_box()
    net = full_periodic_model()
    atoms.calc = HybridpotCalculator(net)
    stress = voigt_6_to_full_3x3_stress(atoms.get_stress())
    terms = net.compute(atoms.positions * 0.1, atoms.numbers, CELL * 0.1, fragments=atoms.arrays["fragment"],
                        fragment_charges=atoms.info["fragment_charges"])["terms"]
    assert abs(float(terms["elec"])) > 10.0 and abs(float(terms["disp"])) > 1.0  # kJ/mol: both terms count
    h, volume = 1e-5, atoms.get_volume()
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = h if a == b else h / 2  # a symmetric strain whose (a, b) + (b, a) sum is h
            e_plus = energy_at(atoms, cell=CELL @ (np.eye(3) + eps))
            e_minus = energy_at(atoms, cell=CELL @ (np.eye(3) - eps))
            numeric[a, b] = numeric[b, a] = (e_plus - e_minus) / (2 * h) / volume
    error = np.abs(stress - numeric).max()
    print(f"stress: max |s - s_fd| = {error:.2e} eV/A^3, max |s| = {np.abs(stress).max():.2e} eV/A^3")
    assert error < 1e-7 * np.abs(stress).max()
    assert np.abs(stress - stress.T).max() < 1e-12 * np.abs(stress).max()


# --- the same numbers as model.compute, in ASE's units -------------------------------------------------
def test_results_equal_model_compute_in_ev_and_angstrom():
    assert KJ_PER_MOL_PER_EV == pytest.approx(96.485332, abs=1e-6)  # CODATA: 1 eV = 96.485332 kJ/mol
    atoms = salt_water_box()
    net = full_periodic_model()
    atoms.calc = HybridpotCalculator(net)
    ref = net.compute(atoms.positions / 10, atoms.numbers, CELL / 10, fragments=atoms.arrays["fragment"],
                      fragment_charges=[1, -1] + [0] * 25)
    energy = atoms.get_potential_energy()
    assert energy == pytest.approx(float(ref["energy"]) / 96.485332, rel=1e-8)
    assert energy == pytest.approx(float(ref["energy"]) / KJ_PER_MOL_PER_EV, rel=1e-14)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy() / 964.85332, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(atoms.get_charges(), ref["charges"].numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(atoms.get_dipole_moment(), ref["dipole"].numpy() * 10, rtol=1e-12, atol=1e-14)
    assert atoms.get_charges()[:2] == pytest.approx([1.0, -1.0], abs=1e-12)  # one-atom fragments keep theirs


def test_model_file_path_and_non_periodic_properties(tmp_path):
    net = model(["H", "C", "O"])
    hybridpot.save_model(net, tmp_path / "m.pt")
    atoms = ethanol()
    atoms.calc = HybridpotCalculator(str(tmp_path / "m.pt"))
    ref = net.compute(atoms.positions / 10, atoms.numbers)
    assert atoms.get_potential_energy() == pytest.approx(float(ref["energy"]) / KJ_PER_MOL_PER_EV, rel=1e-14)
    for getter in (atoms.get_stress, atoms.get_charges):
        with pytest.raises(PropertyNotImplementedError):
            getter()


# --- charges, dipole, atoms.info, uncertainty -----------------------------------------------------------
def test_charge_from_atoms_info_constructor_wins_and_conflicts_are_errors():
    net = model(["H", "C", "O"], charges={"enabled": True}, electrostatics={"enabled": True})
    atoms = ethanol()
    atoms.calc = HybridpotCalculator(net)
    atoms.info["charge"] = 1
    charges = atoms.get_charges()
    assert charges.sum() == pytest.approx(1.0, abs=1e-12)
    centred = atoms.positions - atoms.positions.mean(axis=0)  # about the geometric centre (model convention)
    np.testing.assert_allclose(atoms.get_dipole_moment(), charges @ centred, rtol=1e-9, atol=1e-15)  # e*A
    assert atoms.get_potential_energy() == pytest.approx(
        float(net.compute(atoms.positions / 10, atoms.numbers, total_charge=1)["energy"]) / KJ_PER_MOL_PER_EV,
        rel=1e-14)
    atoms.info["charge"] = -1  # ASE does not watch atoms.info; the calculator does
    assert atoms.get_charges().sum() == pytest.approx(-1.0, abs=1e-12)
    del atoms.info["charge"]
    atoms.info["total_charge"] = 2
    assert atoms.get_charges().sum() == pytest.approx(2.0, abs=1e-12)

    atoms.calc = HybridpotCalculator(net, total_charge=0)  # the constructor wins over atoms.info
    assert atoms.get_charges().sum() == pytest.approx(0.0, abs=1e-12)

    atoms.calc = HybridpotCalculator(net)
    atoms.info["charge"] = 1
    with pytest.raises(ValueError, match=r"atoms.info\['charge'\] = 1 and atoms.info\['total_charge'\] = 2 disagree"):
        atoms.get_potential_energy()
    del atoms.info["charge"], atoms.info["total_charge"]
    atoms.arrays["fragment"] = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    atoms.info["fragment_charges"] = "1 -1"  # as an extended XYZ comment line has it
    atoms.calc = HybridpotCalculator(net, total_charge=1)
    with pytest.raises(ValueError, match=r"fragment_charges sum to 0.0 but total_charge is 1.0"):
        atoms.get_potential_energy()
    atoms.calc = HybridpotCalculator(net)  # the total defaults to the fragments' sum
    charges = atoms.get_charges()
    assert [charges[:6].sum(), charges[6:].sum()] == pytest.approx([1.0, -1.0], abs=1e-12)


def test_charge_without_charge_head_and_pbc_mismatches_are_errors():
    atoms = ethanol()
    atoms.info["charge"] = 1
    atoms.calc = HybridpotCalculator(model(["H", "C", "O"]))
    with pytest.raises(ValueError, match=r"total_charge=1 needs a model with a charge head"):
        atoms.get_potential_energy()
    del atoms.info["charge"]
    atoms.cell, atoms.pbc = np.eye(3) * 20.0, True
    with pytest.raises(ValueError, match=r"non-periodic \(config periodic: false\) but atoms.pbc is \[True, Tr"):
        atoms.get_potential_energy()
    box = salt_water_box()
    box.pbc = [True, True, False]
    box.calc = HybridpotCalculator(full_periodic_model())
    with pytest.raises(ValueError, match=r"periodic \(config periodic: true\) and needs atoms.pbc all True"):
        box.get_forces()
    with pytest.raises(ValueError, match=r"model_or_path must be a HybridModel"):
        HybridpotCalculator(42)


def test_ensemble_spread_and_aleatoric_variance_are_extra_results():
    periodic = dict(periodic=True, dispersion={"enabled": True})
    members = [model(["H", "O", "Na", "Cl"], seed, variance={"enabled": True, "forces": True}, **periodic)
               for seed in range(3)]
    ens = EnsembleModel(members)
    atoms = salt_water_box()
    del atoms.arrays["fragment"], atoms.info["fragment_charges"]  # these models have no charge head
    atoms.calc = calc = HybridpotCalculator(ens)
    ref = ens.compute(atoms.positions / 10, atoms.numbers, CELL / 10)
    assert atoms.get_potential_energy() == pytest.approx(float(ref["energy"]) / KJ_PER_MOL_PER_EV, rel=1e-13)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy() / 964.85332, rtol=1e-8, atol=1e-12)
    for key, scale in (("energy_std", 1.0), ("forces_std", 0.1), ("energy_std_aleatoric", 1.0),
                       ("forces_std_aleatoric", 0.1)):
        np.testing.assert_allclose(calc.get_property(key, atoms), ref[key].numpy() / KJ_PER_MOL_PER_EV * scale,
                                   rtol=1e-9, atol=1e-14)
    assert calc.results["energy_std"] > 0
    assert (calc.results["forces_std"][2:] > 0).all()  # the ions have no MLP neighbors: D3 alone, no spread
    stresses = []
    for m in members:  # the ensemble's stress is the members' mean
        probe = atoms.copy()
        probe.calc = HybridpotCalculator(m)
        stresses.append(probe.get_stress())
    np.testing.assert_allclose(atoms.get_stress(), np.mean(stresses, axis=0), rtol=1e-10, atol=1e-14)

    same = HybridpotCalculator(EnsembleModel([members[0], copy.deepcopy(members[0])]))
    assert same.get_property("energy_std", atoms) == 0.0
    assert (same.get_property("forces_std", atoms) == 0.0).all()


# --- a trained model in ASE's optimiser and integrator ------------------------------------------------
def test_bfgs_relaxes_ethanol_with_a_trained_model(tmp_path):
    """A small Behler-Parrinello model trained for a few seconds on rMD17 ethanol (PBE/def2-SVP) has its
    minimum at sensible bond lengths (experimental r_e: C-C 1.512, C-O 1.431, O-H 0.971, C-H ~1.09 A)."""
    from hybridpot.train import train

    config = {
        "data": {"path": "builtin:rmd17_ethanol_1000.xyz", "energy_unit": "kcal/mol", "length_unit": "angstrom",
                 "split": [200, 50, 50]},
        "model": {"dtype": "float64", "behler_parrinello": {"hidden": [16], "n_radial": 8, "n_angular": 2}},
        "training": {"epochs": 30, "batch_size": 10, "lr": 5e-3, "progress": False, "plots": False},
    }
    result = train(config, tmp_path / "run")
    atoms = ethanol()
    atoms.rattle(0.05, seed=0)
    atoms.calc = HybridpotCalculator(result.model_path)
    start = atoms.get_potential_energy()
    optimizer = BFGS(atoms, logfile=None)
    assert optimizer.run(fmax=0.05, steps=200)
    print(f"BFGS: {optimizer.nsteps} steps, energy {start:.4f} -> {atoms.get_potential_energy():.4f} eV, "
          f"val force MAE {result.best_val_forces_mae:.1f} kJ/mol/nm")
    assert np.abs(atoms.get_forces()).max() < 0.05 and atoms.get_potential_energy() < start
    symbols = atoms.get_chemical_symbols()
    expected = {("C", "C"): 1.512, ("C", "O"): 1.431, ("H", "O"): 0.971, ("C", "H"): 1.09}
    distances = atoms.get_all_distances()
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            pair = tuple(sorted((symbols[i], symbols[j])))
            if pair in expected and distances[i, j] < 1.6:  # bonded
                print(f"  {pair[0]}-{pair[1]} {distances[i, j]:.3f} A (expected {expected[pair]})")
                assert distances[i, j] == pytest.approx(expected[pair], abs=0.05), (pair, distances[i, j])


def test_velocity_verlet_conserves_energy_in_a_periodic_box():
    """NVE with the full hybrid model for 40 fs: the total energy's excursion is the integrator's O(dt^2)
    error, so halving the time step cuts it by ~4. Forces inconsistent with the energy, or in the wrong
    units (eV/A vs kJ/mol/nm is a factor 965), would give an error that does not shrink with dt and is
    of the order of the energy exchanged. The bound, 1e-3 of the potential energy's range at 0.5 fs,
    is ~10x what Velocity Verlet reaches here (1e-4)."""
    net = full_periodic_model()
    excursions, exchanged = {}, {}
    for dt in (1.0, 0.5):
        atoms = salt_water_box()
        kt = units.kB * 300.0  # Maxwell-Boltzmann momenta at 300 K (the call is renamed across ASE versions)
        noise = np.random.default_rng(0).standard_normal((len(atoms), 3))
        atoms.set_momenta(noise * np.sqrt(atoms.get_masses() * kt)[:, None])
        Stationary(atoms)
        atoms.calc = HybridpotCalculator(net)
        potential, total = [], []

        def record(atoms=atoms, potential=potential, total=total):
            potential.append(atoms.get_potential_energy())
            total.append(potential[-1] + atoms.get_kinetic_energy())

        dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
        dyn.attach(record, interval=1)
        dyn.run(int(round(40 / dt)))
        excursions[dt] = np.abs(np.array(total) - total[0]).max()
        exchanged[dt] = np.ptp(potential)
    ratio = excursions[1.0] / excursions[0.5]
    print(f"NVE: max |E_tot - E_tot(0)| = {excursions[1.0]:.2e} eV (1 fs), {excursions[0.5]:.2e} eV (0.5 fs), "
          f"ratio {ratio:.2f}; potential energy range {exchanged[0.5]:.3f} eV")
    assert exchanged[0.5] > 0.05  # kinetic and potential energy really exchange
    assert excursions[0.5] < 1e-3 * exchanged[0.5]
    assert 3.0 < ratio < 5.0
