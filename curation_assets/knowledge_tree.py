"""knowledge_tree: the TAGS tree over canonical tags; tree_memberships: rows grounded on its leaves."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import global_table
from curation_assets.methods.tree import TreeSettings, build_tree, ground_rows
from curation_assets.rowwise import cached_encode
from resources.llm import ChatModelResource, ParseError
from resources.models import EmbedderResource
from resources.storage import CurationStorage

NAMING_PROMPT = (
    "The following topics are the children of one node in a taxonomy of instruction data:\n"
    "{children}\n"
    "Name their common parent topic in 2 to 5 words. Answer with the name only."
)


class TreeNamerResource(ChatModelResource):
    """Optional LLM naming of internal tree nodes; off by default (names come from the leaves)."""

    enabled: bool = Field(False, description="Name internal nodes with the chat model.")

    def name(self, children: list[list[str]]) -> list[str | None]:
        def parse(text: str) -> str:
            name = (text or "").strip().splitlines()[0].strip(" \"'*.#") if (text or "").strip() else ""
            if not name or len(name) > 80:
                raise ParseError("expected a short name on the first line")
            return name

        prompts = [[{"role": "user", "content": NAMING_PROMPT.format(children="\n".join(f"- {c}" for c in kids))}] for kids in children]
        return [r.value if r.ok else None for r in self.generate(prompts, parse)]


class KnowledgeTreeConfig(dg.Config):
    branching: int = Field(5, description="Children per parent on average: each level has ceil(n / branching) nodes.")
    top: int = Field(20, description="Stop when a level has at most this many nodes.")
    max_depth: int = Field(8, description="At most this many levels below the root.")
    seed: int = Field(0, description="K-means seed: the same seed gives the same tree.")


@dg.multi_asset(
    outs={
        "knowledge_tree": global_table("Tree nodes: id, parent, depth, label, member tags, rows, embedding."),
        "tree_memberships": global_table("Row-to-leaf memberships with weight 1/|leaves of the row|."),
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
    vectors = cached_encode([t.lower() for t in labels], embedder.encode, storage.row_cache("embeddings", embedder.version())) if labels else np.zeros((0, 1), np.float32)
    settings = TreeSettings(branching=config.branching, top=config.top, max_depth=config.max_depth, seed=config.seed)
    nodes = build_tree(labels, vectors, leaves["rows"].to_numpy(), settings, tree_namer.name if tree_namer.enabled else None)
    memberships = ground_rows(normalized_tags, nodes)
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
            "nodes_per_depth": ui.md(per_depth),
            "tree": dg.MetadataValue.md(ui.tree_markdown(nodes)),
            "sunburst": ui.sunburst(nodes) if len(labels) else dg.MetadataValue.text("empty tree"),
            "settings": dg.MetadataValue.json({**settings.__dict__, "named_by_llm": tree_namer.enabled, "embedder": embedder.version()}),
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
