"""The selection report: `curate report` and the selection_report asset write one self-contained
HTML page, and a real headless browser (Chromium, from Debian's packages) shows every picture."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import project_dagster_home
from curation_assets.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    dagster_home = project_dagster_home(root / "dagster_home")
    config = root / "curation.yaml"
    config.write_text(
        "home: data\n"
        f"resources:\n  scorer: {{model: {ROOT / 'tests' / 'fixtures' / 'tiny_gpt2'}}}\n  landing: {{min_age_seconds: 0}}\n"
        "  judge: {api_key: sk-not-shown}\n"
        "assets:\n  normalized_tags: {alpha: 1, n_clusters: 2}\n  instance_scores: {methods: [ifd]}\n"
        "  selected_subset: {budget: 0.5, strategy: {top_k: {score: ifd_ppl}}}\n"
    )
    pool = root / "pool"
    pool.mkdir()
    rows = [{"instruction": f"Explain <topic> {i} & why it matters.", "output": f"Topic {i} matters because {i} > {i - 1}."} for i in range(10)]
    (pool / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    try:
        assert main(["run", str(pool), "--config", str(config)]) == 0
        yield config, root / "data"
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def test_curate_report_is_one_self_contained_page(home, tmp_path, monkeypatch, capsys):
    config, data = home
    # The asset wrote its copy beside the export in the run.
    assert (data / "exports" / "selection_report.html").exists()
    out = tmp_path / "report.html"
    assert main(["report", "--config", str(config), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Selection report: top_k, 5 of 10 rows" in page
    assert "quarantined records</td><td>1" in page  # the broken record
    assert "Why rows were kept" in page and "selected: rank 1" in page and "Why rows were dropped" in page
    assert "Explain &lt;topic&gt;" in page and "<topic>" not in page  # row text is escaped
    assert page.count("data:image/png;base64,") >= 3  # lengths, IFD histogram, ...
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing outside the page
    assert "sk-not-shown" not in page and "[hidden]" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_report_shows_its_pictures_in_a_headless_browser(home, tmp_path):
    _, data = home
    page = data / "exports" / "selection_report.html"
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    body = re.search(r"<body[^>]*>", run.stdout).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images >= 3 and 'data-broken-images="0"' in body, body
