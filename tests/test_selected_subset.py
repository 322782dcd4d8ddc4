"""selected_subset in Dagster on the demo pool: every strategy, the reasons table, the checks,
export, `curate why`, and declarative automation when a shard lands."""

import json
from pathlib import Path

import dagster as dg
import polars as pl

from curation_assets.shards import pool_rows
import pytest

from curation_assets import cli
from curation_assets.definitions import build_definitions
from curation_assets.headless import RunConfig, run_graph
import dataclasses

from curation_assets.methods import generic, registry, tacos
from curation_assets.selected_subset import nested_config
from openai_stub import stub_server
from metadata import table_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
SELECTION_KEYS = [dg.AssetKey("selected_subset"), dg.AssetKey("selection_reasons")]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The demo pool through the whole graph once (T-SHIRT with 4 neighbours to keep it quick)."""
    config = RunConfig.load(ROOT / "curation.yaml")
    config.home = str(tmp_path_factory.mktemp("graph") / "home")
    config.assets["instance_scores"]["tshirt_copies"] = 4
    with dg.instance_for_test() as instance:
        report = run_graph([DEMO / "pool"], config, instance=instance, log=lambda _: None)
        assert report.global_run and all(report.shard_runs.values())
        yield config, instance, report.home


def select(graph, resources=None, **settings):
    config, instance, _ = graph
    defs = build_definitions(home=config.home, resource_config={**config.resources, **(resources or {})})
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=SELECTION_KEYS, raise_on_error=False,
        run_config={"ops": {"selected_subset": {"config": nested_config(settings)}}, "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    return result


def tables(graph):
    home = graph[2]
    return pl.read_parquet(home / "assets" / "selected_subset.parquet"), pl.read_parquet(home / "assets" / "selection_reasons.parquet")


def test_demo_selection_is_explained_row_by_row(graph):
    subset, reasons = tables(graph)
    pool = pool_rows(pl.scan_parquet(graph[2] / "assets" / "raw_pool" / "*.parquet")).collect()  # canonical rows (shards.py)
    assert reasons.height == pool.height and reasons["row_id"].is_unique().all()
    assert subset.height == int(0.1 * pool.height) and subset["rank"].to_list() == list(range(1, subset.height + 1))
    chosen = reasons.filter(pl.col("selected")).sort("rank")
    assert chosen["row_id"].to_list() == subset["row_id"].to_list()
    assert chosen["kl_contribution"].null_count() == 0  # the demo aligns to its target prompts
    assert all(r.startswith("selected: rank") for r in chosen["reason"])
    why_not = reasons.filter(~pl.col("selected"))["reason"]
    assert (why_not.str.starts_with("budget reached") | why_not.str.starts_with("no tree leaf")).all()
    assert why_not.str.starts_with("budget reached").any()
    assert chosen["nearest_similarity"][0] is None and chosen["nearest_similarity"][1:].null_count() == 0
    scores = reasons.explode("scores").unnest("scores").drop_nulls("name")
    assert set(scores["name"]) >= {"ifd_ppl", "avg_noisy_ifd", "ifd_loss", "iterit_ifd", "deita_score"}
    assert scores["percentile"].is_between(0, 100).all()
    # Rows off the tree (no tag kept at the demo's min_df) are exactly those with no tree path.
    off_tree = reasons["reason"].str.starts_with("no tree leaf")
    assert (reasons["tree_path"].is_null() == off_tree).all() and chosen["tree_path"].null_count() == 0


def test_checks_pass_and_metadata_shows_coverage(graph):
    result = select(graph, strategy="tags", budget=20)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"budget_met", "no_duplicates", "traceable_to_source", "coverage"} and all(c.passed for c in checks.values())
    meta = result.asset_materializations_for_node("selected_subset")[0].metadata
    assert "data:image/png" in meta["leaf_coverage_plot"].value and "leaves" in meta["leaf_coverage"].value
    assert "selected: rank 1" in table_text(meta["reasons_sample"])
    assert meta["tags_per_row"].value > 0 and "of the pool's canonical tags" in meta["tag_coverage"].value
    assert meta["tree_information"].value > 0 and 0 < meta["entropy_depth_1"].value <= 1
    assert "data:image/png" in meta["tree_coverage"].value and "data:image/png" in meta["gain_distribution"].value


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "tshirt", "budget": 10},
        {"strategy": "iterit", "budget": 10},
        {"strategy": "superfiltering", "budget": 10},
        {"strategy": "cherry", "budget": 10},
        {"strategy": "top_k", "budget": 10, "score": "avg_noisy_ifd", "score_below": 1.0},
        {"strategy": "random", "budget": 10, "seed": 3},
        {"strategy": "instag", "budget": 10},
        {"strategy": "deita", "budget": 10, "deita_threshold": 0.5},  # DEITA's own key: deita_score
        {"strategy": "tags", "budget": 10, "complexity_factor": True, "quality_score": "ifd_ppl", "target_file": None, "target_leaves": []},
    ],
    ids=lambda s: s["strategy"],
)
def test_every_strategy_runs_and_explains(graph, settings):
    result = select(graph, **settings)
    assert result.success, settings
    subset, reasons = tables(graph)
    assert subset.height == min(10, int(reasons["eligible"].sum())) and reasons.filter(pl.col("selected")).height == subset.height
    assert set(reasons["strategy"]) == {settings["strategy"]}
    assert reasons.filter(~pl.col("selected"))["reason"].str.len_chars().min() > 0
    assert all(c.passed for c in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("selected_subset")[0].metadata
    for score in {settings.get("score"), settings.get("quality_score")} - {None}:  # the scores its settings name
        assert "data:image/png" in meta[f"{score}_distribution"].value, (score, sorted(meta))


def test_node_coverage_sums_leaf_mass_up_the_tree():
    from curation_assets.selected_subset import _node_coverage

    # Leaves 3 and 4 under node 1, leaf 5 under node 2; row r1 (chosen) on leaves 3 and 5, r2 on 4.
    share = pl.DataFrame({"row_id": ["r1", "r1", "r2"], "node_id": [3, 5, 4], "weight": [0.5, 0.5, 1.0], "chosen": [True, True, False]})
    coverage = _node_coverage(share, {1: [1], 2: [2], 3: [1, 3], 4: [1, 4], 5: [2, 5]})
    assert coverage == {1: pytest.approx(0.5 / 1.5), 3: 1.0, 4: 0.0, 2: 1.0, 5: 1.0}


def test_strategy_outputs_match_the_method_code(graph):
    """The asset gives the same picks as the pure rules applied to the stored scores."""
    from curation_assets.methods.selection import superfiltering

    assert select(graph, strategy="superfiltering", budget=12).success
    subset, reasons = tables(graph)
    ifd = reasons.explode("scores").unnest("scores").filter(pl.col("name") == "ifd_ppl").select("row_id", "value")
    order = reasons.select("row_id").join(ifd, on="row_id", how="left")
    expected = superfiltering(order["value"].fill_null(float("nan")).to_numpy(), 12)
    assert subset["row_id"].to_list() == [order["row_id"][i] for i in expected]


def test_iterit_documents_end_with_the_scorer_eos(graph):
    """IterIT's TF-IDF documents are response + tokenizer.eos_token, the scorer's own EOS by default."""
    from curation_assets.methods.iterit import greedy_order

    assert select(graph, strategy="iterit", budget=12).success
    subset, reasons = tables(graph)
    pool = pl.read_parquet(graph[2] / "assets" / "raw_pool" / "*.parquet").select("row_id", "response")
    scores = reasons.explode("scores").unnest("scores").filter(pl.col("name") == "iterit_ifd").select("row_id", "value")
    rows = reasons.select("row_id").join(scores, on="row_id", how="left").join(pool.unique("row_id"), on="row_id", how="left")
    ifd = rows["value"].fill_null(float("nan")).to_numpy().astype("float32")
    docs = [r + "<|endoftext|>" for r in rows["response"]]
    expected = [i for i in greedy_order(ifd, docs, range(rows.height), rows.height, 12)[:12] if ifd[i] < 1]
    assert subset["row_id"].to_list() == [rows["row_id"][i] for i in expected]


def test_cherry_fraction_is_a_share_of_the_rows_its_rules_keep(graph):
    assert select(graph, strategy="cherry", budget=0.5).success
    subset, reasons = tables(graph)
    skipped = reasons.filter(pl.col("reason").str.contains("skipped by Cherry's rule")).height
    assert 0 < skipped < reasons.height  # the demo has rows over the length limit and rows with IFD > 1
    assert subset.height == int((reasons.height - skipped) * 0.5)


def test_tacos_strategy_with_a_local_judge(graph):
    config, instance, home = graph

    def reply(body, attempt):
        return 200, "[Response 1]: 80\n[Response 2]: 60", 0

    with stub_server(reply) as (stub, url):
        judge = {"judge": {"enabled": True, "base_url": url, "model": "stub", "backoff_s": 0.01}}
        defs = build_definitions(home=config.home, resource_config={**config.resources, **judge})
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("comparative_scores")]).success
        result = select(graph, resources=judge, strategy="tacos", budget=12, per_cluster=2)
        assert result.success
        subset, reasons = tables(graph)
        assert subset.height == 12
        assert reasons.filter(pl.col("selected"))["gain_name"].unique().to_list() == ["comparative score"]
        assert select(graph, resources=judge, strategy="tacos", budget=12, quota_mode="global", tacos_aggregation="bradley_terry").success
    # The stub always prefers the first response; globally, Bradley-Terry keeps the 12 strongest rows.
    strength = tacos.bradley_terry_strengths(pl.read_parquet(home / "assets" / "comparative_scores.parquet"))
    subset, reasons = tables(graph)
    chosen = set(subset["row_id"])
    assert subset.height == 12
    assert min(strength[r] for r in chosen) >= max(v for r, v in strength.items() if r not in chosen) - 1e-9
    assert min(strength[r] for r in chosen) > min(strength.values())


def test_broken_strategy_fails_the_blocking_checks(graph, monkeypatch):
    real = generic.pick_random

    def doubled(c, budget, cfg):
        picked = real(c, budget, cfg)
        picked.order = picked.order[:-1] + picked.order[:1]  # one row twice, budget kept
        return picked

    monkeypatch.setitem(registry.STRATEGIES, "random", dataclasses.replace(generic.RANDOM, pick=doubled))
    result = select(graph, strategy="random", budget=8)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["budget_met"] is False and not result.success


def test_unknown_strategy_or_setting_is_a_config_error(graph):
    """Each strategy's settings are typed config: a wrong strategy or setting name, or a value
    outside its choices, is rejected by Dagster's run-config validation before any step runs."""
    config, instance, _ = graph
    job = build_definitions(home=config.home, resource_config=config.resources).resolve_implicit_global_asset_job_def()
    for bad, message in (
        ({"strategy": {"magic": {}}}, 'unexpected config entry "magic"'),
        ({"strategy": {"tags": {"tags_gian": "exact_lazy"}}}, 'unexpected config entry "tags_gian"'),
        ({"strategy": {"tags": {"tags_gain": "exact"}}}, "not in enum type"),
        ({"strategy": {"random": {"seed": 1}}, "budgett": 3}, 'unexpected config entry "budgett"'),
    ):
        with pytest.raises(dg.DagsterInvalidConfigError, match=message):
            job.execute_in_process(instance=instance, asset_selection=SELECTION_KEYS, run_config={"ops": {"selected_subset": {"config": bad}}})
    with pytest.raises(ValueError, match="unknown strategy 'magic'"):
        nested_config({"strategy": "magic", "budget": 5})
    with pytest.raises(ValueError, match=r"unknown settings \['tags_gian'\]"):
        nested_config({"strategy": "tags", "tags_gian": "exact_lazy"})


def test_export_and_why(graph, capsys):
    home = graph[2]
    assert cli.main(["export", "--home", str(home), "--out", str(home / "out")]) == 0
    alpaca = json.loads((home / "out" / "alpaca.json").read_text())
    sharegpt = json.loads((home / "out" / "sharegpt.json").read_text())
    messages = [json.loads(line) for line in (home / "out" / "openai_messages.jsonl").read_text().splitlines()]
    subset, reasons = tables(graph)
    assert len(alpaca) == len(sharegpt) == len(messages) == subset.height
    assert {"id", "instruction", "input", "output"} <= set(alpaca[0]) and sharegpt[0]["conversations"][-1]["from"] == "gpt"
    assert messages[0]["messages"][-1]["role"] == "assistant" and messages[0]["id"] == subset["row_id"][0]
    assert pl.read_parquet(home / "out" / "subset.parquet").height == subset.height

    on_tree = reasons.filter(pl.col("selected") & pl.col("tree_path").is_not_null())["row_id"]
    chosen = subset.filter(pl.col("row_id").is_in(on_tree.implode())).row(0, named=True)
    assert cli.main(["why", chosen["row_id"][:10], "--home", str(home)]) == 0
    story = capsys.readouterr().out
    assert f"{chosen['source_file']}, record {chosen['source_row']}" in story
    for part in ("SOURCE", "TAGS", "canonical tags", "tree:", "SCORES", "percentile", "DECISION", "SELECTED"):
        assert part in story
    assert cli.main(["why", "messy.jsonl:1", "--home", str(home)]) == 0
    assert "duplicate copy: messy.jsonl, record 1" in capsys.readouterr().out
    assert cli.main(["why", "nope-not-a-row", "--home", str(home)]) == 2


def test_new_shard_triggers_per_shard_then_global_refresh(tmp_path):
    """Declarative automation: when a shard's raw_pool lands, its per-shard assets are requested;
    the global assets wait until every shard is tagged and scored, then refresh."""
    defs = build_definitions(home=str(tmp_path / "home"))
    storage = defs.resources["storage"]
    path = tmp_path / "shard.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) + "\n" for i in range(5)))
    from curation_assets.landing import land_file

    key = land_file(path, storage.landed, "shard.jsonl").partition
    with dg.instance_for_test() as instance:
        baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor's first tick
        assert baseline.total_requested == 0
        instance.add_dynamic_partitions("pool_shards", [key])
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, partition_key=key, asset_selection=[dg.AssetKey("raw_pool"), dg.AssetKey("raw_pool_quarantine")]).success
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
        for name in ("open_tags", "instance_scores"):
            assert first.get_requested_partitions(dg.AssetKey(name)) == {key}
        for name in ("normalized_tags", "knowledge_tree", "selected_subset", "subset_export"):
            assert first.get_num_requested(dg.AssetKey(name)) == 0  # inputs still missing
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.total_requested == 0  # nothing requested twice
        # Once the shard is tagged and scored, the global assets refresh.
        resources = {"scorer": {"model": str(ROOT / "tests" / "fixtures" / "tiny_gpt2")}}
        scored = build_definitions(home=str(tmp_path / "home"), resource_config=resources)
        run = scored.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, partition_key=key, asset_selection=[dg.AssetKey("open_tags"), dg.AssetKey("instance_scores")],
            run_config={"ops": {"instance_scores": {"config": {"methods": ["ifd"]}}}},
        )
        assert run.success
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_num_requested(dg.AssetKey("normalized_tags")) == 1
