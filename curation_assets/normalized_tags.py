"""normalized_tags: canonical tags and TACOS clusters for the whole pool; tag_vocabulary: the mapping."""

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import global_table
from curation_assets.methods.tag_normalization import NormalizationSettings, normalize_tags
from curation_assets.methods.tree import tree_leaves
from curation_assets.rowwise import cached_encode
from curation_assets.shards import all_shards, identity_counts, pool_rows, shard_frames, skipped_shards
from resources.models import EmbedderResource
from resources.storage import CurationStorage


ROW_COLUMNS = {
    "row_id": "Canonical pool row.",
    "raw_tags": "The tagger's tags for the row, as it wrote them (empty when it was not tagged or failed).",
    "response_chars": "Characters of the response (TACOS keeps the longest row of a label set).",
    "canonical_tags": "Readable canonical tags left after normalization, the frequency filter and merging.",
    "clusters": "K-means clusters of the canonical tags, sorted.",
    "clusters_in_tag_order": "The same clusters in the order of each cluster's first tag in the row (TACOS's cluster map).",
    "labelset_representative": "True for the one row kept per set of clusters (the longest response, first in pool order on ties).",
    "labelset_first_seen": "Pool position of the first row with this set of clusters (TACOS orders cluster members by it).",
    "n_canonical": "Number of canonical tags.",
    "tree_tags": "Tags the knowledge tree places the row under (canonical tags plus rarer tags used by tree_min_rows rows).",
}
VOCABULARY_COLUMNS = {
    "raw_tag": "A tag as the tagger wrote it.",
    "normalized": "Its key after lower-casing, punctuation rules and stemming (the `stem` rule).",
    "canonical_tag": "The canonical tag it maps to; null when dropped.",
    "cluster": "K-means cluster of its canonical tag.",
    "tree_tag": "The tag it counts as on the knowledge tree (null when too rare).",
    "raw_count": "Rows using the raw tag (occurrences with count_on: raw).",
    "count": "Rows using its normalized key.",
    "dropped_reason": "Why it has no canonical tag (the frequency filter, empty after normalization); null when kept.",
    "stem": "The stemming rule that made `normalized`.",
    "tree_leaf": "The leaf concept it belongs to: synonymous tree tags (cosine >= leaf_threshold) share one leaf.",
}


class NormalizedTagsConfig(dg.Config):
    """TACOS / InsTag normalization settings (research/tags-tacos.md §1.3, §3)."""

    alpha: int = Field(20, description="Drop tags used by fewer rows than this (TACOS: 20).")
    count_on: str = Field("normalized", description="normalized: count after the rules; raw: count raw strings (TACOS).")
    stem: str = Field("word", description="word: stem each word (Snowball); phrase: TACOS's whole-phrase Porter; none.")
    merge_threshold: float | None = Field(0.95, description="Merge tags with cosine >= this into one canonical tag (InsTag); null = off.")
    association: bool = Field(False, description="InsTag association aggregation (tags that always co-occur merge).")
    min_support: int = Field(40, description="Association: rows a tag needs before its rules count.")
    min_confidence: float = Field(0.99, description="Association: co-occurrence share that merges two tags.")
    n_clusters: int = Field(50, description="K-means clusters over canonical tags (TACOS: 50).")
    embed_text: str = Field("surface", description="surface: embed each tag's commonest spelling; normalized: the stemmed key (TACOS).")
    seed: int = Field(0, description="K-means seed (TACOS leaves it unseeded).")
    tree_min_rows: int = Field(2, description="TAGS tree leaves: keep tags (leaf concepts) used by at least this many rows, below alpha too (the long tail).")
    leaf_threshold: float | None = Field(0.9, description="TAGS leaf concepts: a tag joins a more used tag at cosine >= this (tags-tacos.md §2.3); null = one leaf per tag.")

    def settings(self) -> NormalizationSettings:
        return NormalizationSettings(**self.model_dump(exclude={"leaf_threshold"}))


def _metadata(rows: pl.DataFrame, vocabulary: pl.DataFrame, settings: NormalizationSettings) -> tuple[dict, dict]:
    canon = rows.select(pl.col("canonical_tags")).explode("canonical_tags").drop_nulls()
    top = canon.group_by("canonical_tags").len().sort(["len", "canonical_tags"], descending=[True, False]).head(20)
    clusters = rows.select(pl.col("clusters")).explode("clusters").drop_nulls().group_by("clusters").len()
    labels = (
        vocabulary.drop_nulls("cluster").group_by("cluster", "canonical_tag").agg(pl.col("count").first())
        .sort(["cluster", "count"], descending=[False, True]).group_by("cluster", maintain_order=True).agg(pl.col("canonical_tag").head(3).str.join(", ").alias("top_tags"))
    )
    cluster_table = clusters.rename({"clusters": "cluster", "len": "rows"}).join(labels, on="cluster", how="left").sort("rows", descending=True)
    vocab_sizes = {
        "raw tags": vocabulary.height,
        "normalized tags": vocabulary["normalized"].n_unique(),
        "kept after the frequency filter": vocabulary.filter(pl.col("canonical_tag").is_not_null())["normalized"].n_unique(),
        "canonical tags": vocabulary["canonical_tag"].drop_nulls().n_unique(),
        "clusters": clusters.height,
    }
    row_meta = {
        "dagster/row_count": rows.height,
        "rows_without_tags": int((rows["n_canonical"] == 0).sum()),
        "labelset_representatives": int(rows["labelset_representative"].sum()),
        "vocabulary": ui.counts(vocab_sizes, "stage", "tags"),
        "top_canonical_tags": ui.table(top.rename({"canonical_tags": "tag", "len": "rows"})),
        "cluster_sizes": ui.table(cluster_table.head(50)),
        "settings": dg.MetadataValue.json(settings.__dict__),
        "tree_leaves": rows["tree_tags"].explode().drop_nulls().n_unique(),
    }
    if top.height:
        row_meta["tag_frequency"] = ui.bar_chart(top["canonical_tags"].to_list(), top["len"].to_list(), "Most used canonical tags", "rows")
    if cluster_table.height:
        row_meta["cluster_size_plot"] = ui.bar_chart([f"{c}: {t}" for c, t in zip(cluster_table["cluster"], cluster_table["top_tags"].fill_null(""))][:25], cluster_table["rows"].to_list()[:25], "Largest clusters", "rows")
    dropped = vocabulary.group_by("dropped_reason").len().drop_nulls()
    vocab_meta = {
        "dagster/row_count": vocabulary.height,
        "dropped_by_reason": ui.table(dropped.rename({"len": "raw tags"})),
        "preview": ui.table(vocabulary.head(15)),
    }
    return row_meta, vocab_meta


@dg.multi_asset(
    outs={
        "normalized_tags": global_table("Per row: canonical tags, TACOS clusters, label-set representative, TAGS tree tags.", ROW_COLUMNS),
        "tag_vocabulary": global_table("Per raw tag: normalized form, canonical tag, cluster, tree tag, its leaf concept (tree_leaf), counts, drop reason.", VOCABULARY_COLUMNS),
    },
    deps=all_shards("open_tags", "raw_pool"),
    group_name="tags",

)
def normalized_tags(
    context: dg.AssetExecutionContext,
    config: NormalizedTagsConfig,
    embedder: EmbedderResource,
    storage: CurationStorage,
):
    stored = shard_frames(context, storage, "raw_pool")
    pool = pool_rows(stored).select("row_id", "response_chars", pl.int_range(pl.len()).alias("pool_order"))
    tags = shard_frames(context, storage, "open_tags")
    if tags is None:
        tags = pl.LazyFrame(schema={"row_id": pl.String, "status": pl.String, "tags": pl.List(pl.Struct({"tag": pl.String, "explanation": pl.String}))})
    tagged = tags.filter(pl.col("status") == "ok").select("row_id", pl.col("tags").list.eval(pl.element().struct.field("tag")).alias("raw_tags")).unique("row_id")
    rows = pool.join(tagged, on="row_id", how="left").with_columns(pl.col("raw_tags").fill_null([])).sort("pool_order").collect()
    settings = config.settings()
    cache = storage.row_cache("embeddings", embedder.version())
    encode = lambda texts: cached_encode(texts, embedder.encode, cache)  # noqa: E731
    out, vocabulary = normalize_tags(rows, encode, settings)
    if config.leaf_threshold is None:
        vocabulary = vocabulary.with_columns(pl.col("tree_tag").alias("tree_leaf"))
    else:
        leaves, vocabulary = tree_leaves(rows, vocabulary, encode, config.leaf_threshold, settings.tree_min_rows)
        out = out.drop("tree_tags").join(leaves, on="row_id", how="left", maintain_order="left")
    row_meta, vocab_meta = _metadata(out, vocabulary, settings)
    row_meta.update(identity_counts(stored))  # cross-file duplicates are decided here (shards.py)
    row_meta["skipped_shards"] = dg.MetadataValue.json(skipped_shards(context))
    if vocabulary.height and vocabulary["canonical_tag"].null_count() == vocabulary.height:
        # Not a failure: the tree still gets its long-tail leaves (tree_min_rows); TACOS clusters do not.
        most = int(vocabulary["count"].max() or 0)
        warning = (
            f"the frequency filter (alpha {settings.alpha}) dropped every tag: the most used tag is on {most} rows. "
            f"No canonical tags or clusters; lower normalized_tags.alpha in the project config for a pool of {out.height} rows."
        )
        context.log.warning(warning)
        row_meta["warning"] = dg.MetadataValue.text(warning)
    context.log.info(f"{out.height} rows, {row_meta['vocabulary']}")
    yield dg.Output(out, "normalized_tags", metadata=row_meta)
    yield dg.Output(vocabulary, "tag_vocabulary", metadata=vocab_meta)
