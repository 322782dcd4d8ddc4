"""knowledge_tree: the TAGS tree over canonical tags; tree_memberships: rows grounded on its leaves."""

import hashlib

import dagster as dg
import numpy as np
import orjson
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import global_table
from curation_assets.methods.tree import (
    ASSIGN_PROMPT,
    RENAME_PROMPT,
    SUMMARIZE_PROMPT,
    Ask,
    TreeSettings,
    build_tree,
    ground_rows,
    parse_name,
    tree_quality,
)
from curation_assets.rowwise import cached_encode, compute_missing
from resources.llm import ChatModelResource, ParseError, version_hash
from resources.models import EmbedderResource
from resources.storage import CurationStorage, RowCache

class TreeNamerResource(ChatModelResource):
    """Optional chat model for the tree; off by default (names come from the leaves).

    enabled: name internal nodes from their children. refine: build each level with Clio's
    refinement (tags-tacos.md §2.3) instead of plain k-means. Answers are cached per prompt and
    generation settings, so a re-run asks only new prompts.
    """

    enabled: bool = Field(False, description="Use the chat model for the tree (naming; with refine, the Clio steps).")
    refine: bool = Field(False, description="Clio-style refinement: summarize neighbourhoods, merge names, assign by vote, rename.")
    neighbourhood: int = Field(40, description="refine: nodes per neighbourhood (Clio: about 40).")
    votes: int = Field(1, description="refine: assignment answers per child; the majority wins (Clio: 5).")

    def version(self) -> str:
        return version_hash(self.generation_key(), RENAME_PROMPT, SUMMARIZE_PROMPT, ASSIGN_PROMPT)

    def ask(self, cache: RowCache) -> Ask:
        """prompts -> parsed answers (None on failure), each answer cached by its prompt."""

        def ask(prompts: list[str], parse) -> list:
            def checked(text: str):
                try:
                    return parse(text)
                except ValueError as exc:  # our parsers raise ValueError; retry like any off-format answer
                    raise ParseError(str(exc)) from exc

            def compute(chunk: pl.DataFrame) -> pl.DataFrame:
                results = self.generate([[{"role": "user", "content": t}] for t in chunk["prompt"]], checked)
                return pl.DataFrame({"row_id": chunk["row_id"], "answer": [orjson.dumps(r.value).decode() if r.ok else None for r in results], "error": [r.error for r in results]}, schema={"row_id": pl.String, "answer": pl.String, "error": pl.String})

            keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in prompts]
            frame = pl.DataFrame({"row_id": keys, "prompt": prompts}).unique("row_id", keep="first", maintain_order=True)
            done, _ = compute_missing(frame, cache, compute, chunk_rows=256, keep=lambda r: r["answer"].is_not_null())
            by_key = {k: (orjson.loads(a) if a is not None else None) for k, a in zip(done["row_id"], done["answer"])}
            return [by_key[k] for k in keys]

        return ask

    def name(self, children: list[list[str]], cache: RowCache) -> list[str | None]:
        return self.ask(cache)([RENAME_PROMPT.format(children="\n".join(f"- {c}" for c in kids)) for kids in children], parse_name)


class KnowledgeTreeConfig(dg.Config):
    branching: int = Field(5, description="Children per parent on average: each level has ceil(n / branching) nodes.")
    top: int = Field(20, description="Stop when a level has at most this many nodes.")
    max_depth: int = Field(8, description="At most this many levels below the root.")
    seed: int = Field(0, description="K-means seed: the same seed gives the same tree.")


NODE_COLUMNS = {
    "node_id": "Node id (the root is 0).",
    "parent_id": "Parent node; null for the root.",
    "depth": "Distance from the root (root 0, leaves deepest).",
    "level": "Height above the leaves (leaves 0).",
    "label": "The node's name: a leaf's concept; a parent's two most used leaves (or the LLM refiner's name).",
    "is_leaf": "True for leaf concepts.",
    "n_leaves": "Leaves at or below the node.",
    "leaf_rows": "Row-leaf memberships at or below the node (a row on several leaves counts once per leaf).",
    "member_tags": "Labels of the leaves below the node.",
    "embedding": "Unit embedding of the node (a leaf's concept; a parent's k-means centroid), on which target tags are grounded.",
}
MEMBERSHIP_COLUMNS = {
    "row_id": "Canonical pool row.",
    "node_id": "A leaf the row sits on.",
    "weight": "1 / number of leaves of the row, so each row weighs 1 in the tree's distribution.",
}
QUALITY_MEANING = {
    "leaves": "leaf concepts",
    "internal_nodes": "nodes between the root and the leaves",
    "rows_per_leaf_median": "median rows grounded on a leaf",
    "rows_per_leaf_mean": "mean rows grounded on a leaf",
    "single_row_leaf_share": "share of leaves holding one row",
    "depth_max": "levels below the root",
    "leaf_depth_mean": "mean depth of a leaf",
    "branching_mean": "mean children per parent",
    "branching_max": "most children of one parent",
    "rows_grounded_share": "share of pool rows on at least one leaf",
    "label_repeats_on_paths": "nodes labelled like their parent",
}


def quality_table(quality: dict) -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn("measure", "string"), dg.TableColumn("value", "float"), dg.TableColumn("meaning", "string")])
    records = [dg.TableRecord({"measure": k, "value": float(round(v, 4)), "meaning": QUALITY_MEANING.get(k, "")}) for k, v in quality.items()]
    return dg.MetadataValue.table(records, schema=schema)


def quality_plot(nodes: pl.DataFrame, memberships: pl.DataFrame) -> dg.MetadataValue:
    """Rows per leaf (histogram) beside nodes per depth (bars)."""
    per_leaf = memberships.group_by("node_id").agg(pl.col("row_id").n_unique())["row_id"].to_numpy()
    per_depth = nodes.group_by("depth").len().sort("depth")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
    axes[0].hist(per_leaf, bins=np.arange(1, max(int(per_leaf.max(initial=1)), 2) + 2) - 0.5)
    axes[0].set_title("Rows per leaf")
    axes[0].set_xlabel("rows")
    axes[0].set_ylabel("leaves")
    axes[1].bar(per_depth["depth"].to_list(), per_depth["len"].to_list())
    axes[1].set_title("Nodes per depth")
    axes[1].set_xlabel("depth (root 0)")
    return ui.png_md(fig, "tree quality")


@dg.multi_asset(
    outs={
        "knowledge_tree": global_table("Tree nodes: id, parent, depth, label, member tags, rows, embedding.", NODE_COLUMNS),
        "tree_memberships": global_table("Row-to-leaf memberships with weight 1/|leaves of the row|.", MEMBERSHIP_COLUMNS),
    },
    group_name="tags",

)
def knowledge_tree(
    context: dg.AssetExecutionContext,
    config: KnowledgeTreeConfig,
    normalized_tags: pl.DataFrame,
    embedder: EmbedderResource,
    tree_namer: TreeNamerResource,
    storage: CurationStorage,
):
    leaves = (
        normalized_tags.select("row_id", pl.col("tree_tags").alias("tag")).explode("tag").drop_nulls("tag")
        .group_by("tag").agg(pl.col("row_id").n_unique().alias("rows")).sort("tag")
    )
    labels = leaves["tag"].to_list()
    emb_cache = storage.row_cache("embeddings", embedder.version())
    encode = lambda texts: cached_encode([t.lower() for t in texts], embedder.encode, emb_cache)  # noqa: E731
    vectors = encode(labels) if labels else np.zeros((0, 1), np.float32)
    settings = TreeSettings(branching=config.branching, top=config.top, max_depth=config.max_depth, seed=config.seed, neighbourhood=tree_namer.neighbourhood, votes=tree_namer.votes)
    llm_cache = storage.row_cache("tree_llm", tree_namer.version())
    namer = (lambda children: tree_namer.name(children, llm_cache)) if tree_namer.enabled and not tree_namer.refine else None
    refine = (tree_namer.ask(llm_cache), encode) if tree_namer.enabled and tree_namer.refine else None
    nodes = build_tree(labels, vectors, leaves["rows"].to_numpy(), settings, namer, refine)
    memberships = ground_rows(normalized_tags, nodes)
    quality = tree_quality(nodes, memberships, normalized_tags.height)
    per_depth = nodes.group_by("depth").agg(pl.len().alias("nodes")).sort("depth")
    context.log.info(f"tree: {nodes.height} nodes over {len(labels)} leaves, depth {int(nodes['depth'].max() or 0)}")
    rows_on_tree = memberships["row_id"].n_unique()
    yield dg.Output(
        nodes,
        "knowledge_tree",
        metadata={
            "dagster/row_count": nodes.height,
            "leaves": len(labels),
            "depth": int(nodes["depth"].max() or 0),
            "nodes_per_depth": ui.table(per_depth),
            "tree": dg.MetadataValue.md(ui.tree_markdown(nodes)),
            "sunburst": ui.sunburst(nodes) if len(labels) else dg.MetadataValue.text("empty tree"),
            "quality": quality_table(quality),
            "quality_plot": quality_plot(nodes, memberships),
            **{f"quality/{k}": v for k, v in quality.items()},
            "settings": dg.MetadataValue.json({**settings.__dict__, "named_by_llm": tree_namer.enabled, "clio_refined": tree_namer.enabled and tree_namer.refine, "embedder": embedder.version()}),
        },
    )
    yield dg.Output(
        memberships,
        "tree_memberships",
        metadata={
            "dagster/row_count": memberships.height,
            "rows_on_tree": rows_on_tree,
            "rows_without_leaf": normalized_tags.height - rows_on_tree,
            "leaves_per_row": float(memberships.group_by("row_id").len()["len"].mean() or 0),
        },
    )
