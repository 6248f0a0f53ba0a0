import json

import pytest

from pyrobayes.jobs.cli import main
from pyrobayes.jobs.demo_1d import CompareConfig, run_compare

SMOKE = [
    "--n-train",
    "8",
    "--n-test",
    "30",
    "--mlp-steps",
    "50",
    "--svi-steps",
    "20",
    "--num-samples",
    "20",
    "--nuts-warmup",
    "5",
    "--nuts-samples",
    "5",
    "--no-progress",
]


def test_cli_compare_gp_writes_three_files(tmp_path, capsys):
    assert main(["compare", "--prior", "gp", *SMOKE, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "exact GP" in printed and "SVI (MOPED)" in printed and "PFN (gp-1d)" in printed
    for name in ("compare.png", "compare.json", "compare.md"):
        assert (tmp_path / name).stat().st_size > 0
    payload = json.loads((tmp_path / "compare.json").read_text())
    methods = [r["method"] for r in payload["table"]["rows"]]
    assert methods == ["MLP + noise", "SVI (MOPED)", "PFN (gp-1d)", "exact GP"]
    assert payload["n_train"] == 8 and payload["n_test"] == 30


@pytest.mark.slow
def test_compare_bnn_prior_with_nuts(tmp_path):
    res = run_compare(
        CompareConfig(
            n_train=8,
            n_test=30,
            mlp_steps=50,
            svi_steps=20,
            num_samples=20,
            nuts_warmup=20,
            nuts_samples=20,
            out=str(tmp_path),
            progress=False,
        )
    )
    nuts = [k for k in res["ppds"] if k.startswith("NUTS")]
    assert set(res["ppds"]) == {"MLP + noise", "SVI (MOPED)", "PFN (bnn-1d)", *nuts}
    # the verdict is in the row's name (a 20/20 budget may or may not converge)
    assert nuts in (["NUTS (converged)"], ["NUTS (NOT converged)"])
    assert (tmp_path / "compare.png").exists()


def test_cli_compare_reads_csv(tmp_path):
    csv = tmp_path / "d.csv"
    rows = "\n".join(f"{i / 10},{(i / 10) ** 2},{i}" for i in range(30))
    csv.write_text("t,v,idx\n" + rows + "\n")
    assert (
        main(
            [
                "compare",
                "--prior",
                "gp",
                "--data",
                str(csv),
                "--x",
                "t",
                "--y",
                "v",
                "--splits",  # --data runs the real-data protocol (pyrobayes.jobs.tabular_regression)
                "2",
                "--ensemble-steps",
                "20",
                "--dropout-steps",
                "20",
                "--dropout-passes",
                "5",
                *SMOKE,
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert (tmp_path / "o" / "compare.md").read_text().count("|") > 10


@pytest.mark.parametrize(
    "content, args, message",
    [
        (None, ["--data", "missing.csv"], "missing.csv"),
        ("a,b\n1,2\n2,3\n3,4\n4,5\n", ["--x", "t", "--y", "b"], "'t'"),
        ("t,v\n1,2\n2,\n3,4\n4,5\n5,6\n", ["--x", "t", "--y", "v"], "NaN"),
        ("t,v\n1,2\n2,3\n", ["--x", "t", "--y", "v"], "2"),
    ],
)
def test_cli_compare_bad_csv_is_a_clear_error(tmp_path, capsys, content, args, message):
    if content is not None:
        (tmp_path / "d.csv").write_text(content)
        args = ["--data", str(tmp_path / "d.csv"), *args]
    assert main(["compare", *args, *SMOKE, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrobayes compare: error:") and message in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        CompareConfig(prior="laplace")
    with pytest.raises(ValueError, match="svi-steps"):
        CompareConfig(svi_steps=0)


def test_real_data_from_python_is_a_clear_error_naming_run_tabular():
    # From Python, CompareConfig(data=...) used to run the 1-D demo on one column of the
    # table; the real-data protocol has its own config, and the error says which.
    with pytest.raises(ValueError) as err:
        CompareConfig(data="diabetes")
    msg = str(err.value)
    assert "run_tabular" in msg and "TabularConfig" in msg and "'diabetes'" in msg


def test_real_data_api_is_exported_from_the_package():
    import pyrobayes
    from pyrobayes.jobs import tabular_regression as tabular_job

    for name in ("TabularConfig", "TabularResult", "run_tabular", "plot_tabular_summary"):
        assert getattr(pyrobayes, name) is getattr(tabular_job, name) and name in pyrobayes.__all__
    assert pyrobayes.run_compare is run_compare and pyrobayes.CompareConfig is CompareConfig
