"""The catalog's content: families, releases with their published figures, licenses, cards.

Plain data, no Django: `seed_catalog` turns it into rows, keyed by slug (or title), so editing a
text here and re-running the command updates the row in place.

Sources are public: the OPT paper (Zhang et al., 2022) and its model card and datasheet, the LLaMA
paper (Touvron et al., 2023), the GLaM paper (Du et al., 2021) and /work/shared/FORMATS.md. Texts are
written in our own words. Where a figure is our own estimate rather than a published number, the
text says so.

The sparse MoE family is a GLaM-*pattern* release trained and hosted by this platform's lab: it
follows the architecture the GLaM paper describes; Google's own GLaM weights were never released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

OPEN = "open"
GATED = "gated"

# --- Types ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LicenseVersionData:
    version: str
    published_at: datetime
    text: str


@dataclass(frozen=True)
class LicenseData:
    slug: str
    name: str
    versions: tuple[LicenseVersionData, ...]


@dataclass(frozen=True)
class FamilyData:
    slug: str
    name: str
    organization: str
    architecture: str  # access.models.Architecture value
    summary: str


@dataclass(frozen=True)
class DatasetShare:
    name: str
    share: float  # fraction of training tokens, 0..1
    description: str

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "share": self.share, "description": self.description}


@dataclass(frozen=True)
class DataCardData:
    slug: str
    title: str
    motivation: str
    datasets: tuple[DatasetShare, ...]
    size_tokens: int
    raw_data: str
    labels: str
    splits: str
    collection: str
    preprocessing: str


@dataclass(frozen=True)
class ModelCardData:
    release_date: date
    version: str
    model_type: str
    intended_use: str
    out_of_scope_use: str
    evaluation_data: str
    limitations: str
    training_compute: str


@dataclass(frozen=True)
class ReleaseData:
    slug: str
    name: str
    family: str  # FamilyData.slug
    size_label: str
    access_tier: str
    license: str  # LicenseData.slug
    data_card: str  # DataCardData.slug
    summary: str
    parameters: int
    n_layers: int
    n_heads: int
    hidden_size: int
    ffn_size: int
    vocab_size: int
    max_positions: int
    model_card: ModelCardData
    n_kv_heads: int | None = None  # None: multi-head attention, n_kv_heads = n_heads
    active_parameters: int | None = None
    n_experts: int | None = None
    experts_per_token: int | None = None
    moe_every: int | None = None
    training_tp: int | None = None
    sort_order: int = 0
    is_listed: bool = True

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads


@dataclass(frozen=True)
class RejectionTemplateData:
    title: str
    body: str  # may use {release} and {name}; services.reviews.rejection_template_render fills them


@dataclass(frozen=True)
class Catalog:
    licenses: tuple[LicenseData, ...] = field(default_factory=tuple)
    families: tuple[FamilyData, ...] = field(default_factory=tuple)
    data_cards: tuple[DataCardData, ...] = field(default_factory=tuple)
    releases: tuple[ReleaseData, ...] = field(default_factory=tuple)
    rejection_templates: tuple[RejectionTemplateData, ...] = field(default_factory=tuple)


# --- Licenses ---------------------------------------------------------------------------------


def _research_license(*, title: str, licensor: str, models: str, scope: str, extra: str = "") -> str:
    """The clauses our research licenses share, around a license-specific scope paragraph."""
    extra_block = f"\n\n{extra}" if extra else ""
    return f"""{title}

1. Who and what. This license is granted by {licensor} ("we") to the person who accepts it ("you") and covers {models}: the model weights, their configuration and tokenizer files, and any documentation we ship with them (together, "the Materials").

2. Permitted use. {scope} You may run, study, evaluate and fine-tune the Materials, and build derivative models, only for non-commercial research. Non-commercial means no use that is primarily intended for, or directed towards, commercial advantage or monetary compensation, including use in a product, a paid service, or an internal business process.

3. No redistribution of weights. You may not share, sell, sublicense, publish or otherwise make available the Materials, or weights derived from them (including fine-tuned or quantised copies), to anyone who has not accepted this license themselves. Colleagues at your institution who want access apply on their own. Keep the Materials on systems you control and protect them against unauthorised access.

4. Publishing results. You may publish research results, papers, evaluation numbers, code, and small samples of model output obtained with the Materials. When you do, cite the work that introduced the model and state which release you used. You may not imply that we endorse your work.

5. Responsible use. You will not use the Materials to harm people, to deceive people into believing they are talking to a human, to generate disinformation, spam or malware, to surveil or discriminate against individuals, or in breach of any applicable law. You are responsible for the outputs you generate and for what you do with them.{extra_block}

6. Termination. This license ends automatically if you breach it; we may also end it by notice if we have reason to believe you breached it. When it ends you must stop using the Materials and delete every copy you hold, including derived weights. Sections 4 (for results already published), 7 and 8 survive termination.

7. No warranty. The Materials are provided "as is", without warranty of any kind, express or implied, including fitness for a particular purpose, accuracy of outputs, and non-infringement. Models can produce false, offensive or biased text.

8. Limitation of liability. To the extent the law allows, we are not liable for any damages arising from your use of the Materials or of their outputs.

9. Changes. We may publish a new version of this license. Continued use after a new version is published requires that you accept it; until you do, your access is paused.
"""


_OPT_175B_LICENSE = _research_license(
    title="OPT-175B Non-Commercial Research License, version 1.0",
    licensor="the OpenRelease platform, hosting the release on behalf of its authors (Meta AI)",
    models="the OPT-175B release",
    scope=(
        "Access is granted to the individual named in an approved application, for the research purpose "
        "described in that application, and only while their grant is active."
    ),
    extra=(
        "Access reviews. Your grant has an expiry date and can be renewed. We may ask you to confirm that "
        "your use still matches the approved purpose, and we may revoke access that no longer does."
    ),
)

_OPT_OPEN_LICENSE = _research_license(
    title="OPT Open-Model License, version 1.0",
    licensor="the OpenRelease platform, hosting the releases on behalf of their authors (Meta AI)",
    models="the OPT releases from 125M to 66B parameters that this platform offers as open downloads",
    scope=(
        "This is a click-through license: no application is needed, and accepting it while signed in "
        "gives you access to the open OPT sizes."
    ),
)

_LLAMA_LICENSE = _research_license(
    title="LLaMA Non-Commercial Research License, version 1.0",
    licensor="the OpenRelease platform, hosting the releases on behalf of their authors (Meta AI)",
    models="the LLaMA releases (7B, 13B, 33B and 65B parameters)",
    scope=(
        "Access is granted per release to the individual named in an approved application, for the research "
        "purpose described in it, and only while their grant for that release is active. Researchers at "
        "academic institutions, government, civil-society organisations and industry research labs may apply."
    ),
    extra=(
        "Model comparisons. Benchmarks and comparisons against other models are welcome; if you publish them, "
        "report the exact release, the prompts and the decoding settings so others can reproduce them."
    ),
)

_MOE_LICENSE = _research_license(
    title="Sparse MoE Research License, version 1.0",
    licensor="the OpenRelease platform's lab, which trained and hosts these releases",
    models=(
        "the GLaM-style sparse mixture-of-experts releases trained by our lab (the 1.2T-parameter release and "
        "the small 64-expert release)"
    ),
    scope=(
        "Access is granted per release to the individual named in an approved application, for the research "
        "purpose described in it, and only while their grant is active. Research on routing, expert "
        "specialisation, load balancing and efficient inference is explicitly in scope."
    ),
    extra=(
        "Attribution. These releases follow the architecture described in the GLaM paper (Du et al., 2021) but "
        "are not Google's GLaM checkpoints. Cite the GLaM paper for the architecture and this platform's release "
        "for the weights, and do not describe the weights as Google's."
    ),
)

_V1_DATE = datetime(2024, 6, 3, tzinfo=UTC)

LICENSES: tuple[LicenseData, ...] = (
    LicenseData(
        slug="opt-175b-license",
        name="OPT-175B non-commercial research license",
        versions=(LicenseVersionData("1.0", datetime(2022, 5, 3, tzinfo=UTC), _OPT_175B_LICENSE),),
    ),
    LicenseData(
        slug="opt-open-license",
        name="OPT open-model license",
        versions=(LicenseVersionData("1.0", datetime(2022, 5, 3, tzinfo=UTC), _OPT_OPEN_LICENSE),),
    ),
    LicenseData(
        slug="llama-license",
        name="LLaMA non-commercial research license",
        versions=(LicenseVersionData("1.0", datetime(2023, 2, 24, tzinfo=UTC), _LLAMA_LICENSE),),
    ),
    LicenseData(
        slug="moe-research-license",
        name="MoE research license",
        versions=(LicenseVersionData("1.0", _V1_DATE, _MOE_LICENSE),),
    ),
)

# --- Families ---------------------------------------------------------------------------------

FAMILIES: tuple[FamilyData, ...] = (
    FamilyData(
        slug="opt",
        name="OPT",
        organization="Meta AI",
        architecture="opt",
        summary=(
            "Open Pre-trained Transformers: nine decoder-only language models from 125M to 175B parameters, "
            "released by Meta AI in May 2022 to give researchers GPT-3-class models they can study. The sizes up "
            "to 66B are open downloads; OPT-175B is released to researchers under a non-commercial license after "
            "an application. All sizes share one architecture (pre-LayerNorm except 350M, ReLU feed-forward, "
            "learned positions, 2048-token context) and one ~180B-token English corpus."
        ),
    ),
    FamilyData(
        slug="llama",
        name="LLaMA",
        organization="Meta AI",
        architecture="llama",
        summary=(
            "Large Language Model Meta AI: four foundation models (7B, 13B, 33B, 65B parameters) released by Meta "
            "AI in February 2023, trained only on publicly available data. They use pre-normalisation with "
            "RMSNorm, SwiGLU feed-forward layers and rotary position embeddings, and were trained on far more "
            "tokens per parameter than earlier models of their size. All four are gated: access requires an "
            "approved application under a non-commercial research license."
        ),
    ),
    FamilyData(
        slug="glam-moe",
        name="Sparse MoE (GLaM-style)",
        organization="OpenRelease lab",
        architecture="moe",
        summary=(
            "Sparse mixture-of-experts decoders trained and hosted by this platform's lab, following the pattern "
            "of Google's GLaM (Du et al., 2021): every other feed-forward layer is replaced by 64 experts, and a "
            "learned gate sends each token to its top 2. The largest release matches GLaM's published scale, "
            "about 1.2T parameters in all of which about 97B (8%) are active per token. These are not Google's "
            "GLaM weights, which were never released. Access is gated."
        ),
    ),
)

# --- Data cards -------------------------------------------------------------------------------

DATA_CARDS: tuple[DataCardData, ...] = (
    DataCardData(
        slug="opt-data",
        title="OPT pre-training corpus",
        motivation=(
            "Assembled by Meta AI to pre-train the OPT models on a large, diverse English corpus comparable to the "
            "one used for GPT-3, built only from datasets that had already been published, so that the training "
            "data of an openly shared model suite is documented and traceable to its sources."
        ),
        datasets=(
            DatasetShare("BookCorpus", 0.02, "Unpublished books; part of the RoBERTa pre-training corpus."),
            DatasetShare(
                "CC-Stories",
                0.06,
                "CommonCrawl documents filtered to resemble the story-like style of Winograd schemas (RoBERTa corpus).",
            ),
            DatasetShare(
                "CC-News v2",
                0.12,
                "English news articles from CommonCrawl News, extended in time for OPT (RoBERTa corpus).",
            ),
            DatasetShare(
                "The Pile (subset)",
                0.60,
                "CommonCrawl, DM Mathematics, Project Gutenberg, HackerNews, OpenSubtitles, OpenWebText2, USPTO "
                "and Wikipedia subsets of The Pile.",
            ),
            DatasetShare(
                "PushShift.io Reddit",
                0.20,
                "Reddit conversations; each thread reduced to its longest chain of comments to make it linear text.",
            ),
        ),
        size_tokens=180_000_000_000,
        raw_data=(
            "Not released. Every component is a previously published dataset; the card names them so researchers "
            "can obtain them from their original sources. Per-dataset shares above are our approximate estimates "
            "of each source's fraction of the ~180B training tokens; the OPT paper and datasheet describe the "
            "composition but are the authority on exact proportions."
        ),
        labels="None. The corpus is raw text used for self-supervised next-token prediction.",
        splits=(
            "A small validation set (about 200MB) was held out, sampled from each component in proportion to its "
            "share of the pre-training data; everything else was used for training."
        ),
        collection=(
            "Text gathered by the creators of the component datasets, mostly from the public web (CommonCrawl "
            "snapshots, news sites, Reddit via the PushShift.io dumps, Wikipedia, Project Gutenberg and others). "
            "The corpus is predominantly English; a small amount of other languages enters through CommonCrawl. "
            "It contains personal information and offensive content present in the public web."
        ),
        preprocessing=(
            "Near-duplicate documents were removed across all components with MinHash LSH (documents with a "
            "Jaccard similarity of 0.95 or more), which mattered especially for the Pile, where duplication was "
            "high. Reddit threads were linearised by keeping the longest comment chain. Some repetitive, "
            "non-informative boilerplate (for example recurring front matter in books) was removed. The text was "
            "tokenized with the GPT-2 byte-level BPE tokenizer, with the vocabulary padded to 50272 entries."
        ),
    ),
    DataCardData(
        slug="llama-data",
        title="LLaMA pre-training mixture",
        motivation=(
            "Collected by Meta AI to show that state-of-the-art foundation models can be trained exclusively on "
            "publicly available data, with a mixture broad enough to cover web text, code, scientific writing, "
            "reference works and books."
        ),
        datasets=(
            DatasetShare(
                "English CommonCrawl", 0.67, "Five CommonCrawl dumps (2017 to 2020) processed with the CCNet pipeline."
            ),
            DatasetShare(
                "C4", 0.15, "The Colossal Clean Crawled Corpus, a differently filtered CommonCrawl derivative."
            ),
            DatasetShare("GitHub", 0.045, "Public repositories under Apache, BSD and MIT licenses (Google BigQuery)."),
            DatasetShare(
                "Wikipedia", 0.045, "June to August 2022 dumps in 20 languages written in Latin or Cyrillic scripts."
            ),
            DatasetShare("Books", 0.045, "Project Gutenberg and the Books3 section of The Pile."),
            DatasetShare("ArXiv", 0.025, "LaTeX sources of scientific papers."),
            DatasetShare("StackExchange", 0.02, "Questions and answers from the 28 largest StackExchange sites."),
        ),
        size_tokens=1_400_000_000_000,
        raw_data=(
            "Not released. All sources are public and named above. The mixture holds about 1.4T tokens after "
            "tokenization; LLaMA-33B and LLaMA-65B were trained on 1.4T tokens, LLaMA-7B and LLaMA-13B on 1.0T. "
            "Wikipedia and Books were seen for about two epochs, the other sources about once."
        ),
        labels="None. Self-supervised next-token prediction on raw text and code.",
        splits="The paper reports training loss over the mixture; no held-out split of the pre-training data is published.",
        collection=(
            "Public web crawls, code hosting, encyclopaedias, public-domain and published books, preprints and "
            "community Q&A sites, gathered by Meta AI from their public distributions. The data is mostly English "
            "and contains personal information, biases and offensive content found on the web."
        ),
        preprocessing=(
            "CommonCrawl: line-level deduplication, fastText language identification to keep English, an n-gram "
            "language model to drop low-quality pages, and a classifier keeping pages similar to those Wikipedia "
            "cites. C4: heuristic quality filters (punctuation, word and sentence counts). GitHub: line-length and "
            "alphanumeric-ratio filters, boilerplate removal, exact file-level deduplication. Wikipedia: "
            "hyperlinks, comments and formatting removed. Books: book-level deduplication at 90% content overlap. "
            "ArXiv: text before the first section and the bibliography removed, comments removed, macros inlined. "
            "StackExchange: HTML removed, answers sorted by score. Tokenized with a SentencePiece BPE tokenizer "
            "(32000 entries) that splits numbers into digits and falls back to bytes for unknown characters."
        ),
    ),
    DataCardData(
        slug="glam-data",
        title="GLaM-style pre-training mixture",
        motivation=(
            "The mixture follows the recipe the GLaM paper published for training a sparse model of this scale: "
            "a high-quality, diverse English-dominant corpus in which a quality filter decides how much web text "
            "enters. Our lab assembled its corpus to that recipe for the GLaM-style releases on this platform."
        ),
        datasets=(
            DatasetShare(
                "Filtered web pages", 0.42, "Web pages kept by a text-quality classifier (about 143B tokens)."
            ),
            DatasetShare("Wikipedia", 0.06, "Encyclopaedia articles (about 3B tokens)."),
            DatasetShare("Conversations", 0.28, "Public-domain social media conversations (about 174B tokens)."),
            DatasetShare("Forums", 0.02, "Discussion forum pages (about 247B tokens)."),
            DatasetShare("Books", 0.20, "Published books (about 390B tokens)."),
            DatasetShare("News", 0.02, "News articles (about 650B tokens)."),
        ),
        size_tokens=1_600_000_000_000,
        raw_data=(
            "Not released. Shares are the mixture weights published in the GLaM paper's data table (the fraction "
            "of each training batch drawn from a source, not the source's size): small, high-quality sources such "
            "as Wikipedia are up-weighted and very large ones such as news are down-weighted."
        ),
        labels="None. Self-supervised next-token prediction.",
        splits="A held-out validation sample drawn from each source by the same mixture weights; the rest is training data.",
        collection=(
            "Web pages, Wikipedia, public conversations, forums, books and news gathered from public sources. "
            "Mostly English. The data contains personal information, biases and offensive content found on the web."
        ),
        preprocessing=(
            "A linear text-quality classifier, trained to tell curated text (Wikipedia, books, selected sites) from "
            "general web pages, scored every web page, and pages were sampled according to that score rather than "
            "cut at a threshold, to avoid a systematic bias from the classifier. Sources were deduplicated and "
            "tokenized with a SentencePiece word-piece vocabulary of 256K entries."
        ),
    ),
)

# --- Releases ---------------------------------------------------------------------------------

OPT_RELEASE_DATE = date(2022, 5, 3)
LLAMA_RELEASE_DATE = date(2023, 2, 24)
MOE_RELEASE_DATE = date(2024, 6, 3)

_OPT_EVALUATION = (
    "Evaluated by its authors with GPT-3's prompts and set-up on 16 standard NLP tasks in zero- and few-shot "
    "settings (including HellaSwag, StoryCloze, PIQA, ARC Easy and Challenge, OpenBookQA, WinoGrad, WinoGrande and "
    "SuperGLUE tasks), on open-domain dialogue (ConvAI2, Wizard of Wikipedia, Empathetic Dialogues, Blended Skill "
    "Talk, Wizard of Internet), and on bias and toxicity benchmarks (ETHOS hate-speech detection, CrowS-Pairs, "
    "StereoSet, RealToxicityPrompts, SaferDialogues)."
)

_OPT_OUT_OF_SCOPE = (
    "Commercial use of any kind; deployment in products or services; interaction with people who do not know "
    "they are talking to a model; high-stakes decisions about people (employment, credit, housing, health, law "
    "enforcement); generating disinformation, spam or impersonation; and any use in languages other than English "
    "without a dedicated evaluation. The model is not fine-tuned to follow instructions or to be safe."
)


def _opt_card(size: str, *, training_tp: int, extra_limitation: str = "", compute: str = "") -> ModelCardData:
    return ModelCardData(
        release_date=OPT_RELEASE_DATE,
        version="1.0",
        model_type=(
            f"OPT-{size}: decoder-only transformer language model, pre-trained with a causal language-modelling "
            "objective on English text; ReLU feed-forward, learned positional embeddings, GPT-2 byte-level BPE "
            "vocabulary of 50272 entries, 2048-token context. A base model: not instruction-tuned."
        ),
        intended_use=(
            "Research on large language models: reproducing and extending published results, studying capabilities "
            "and failure modes, bias, toxicity and robustness, prompting and in-context learning, interpretability, "
            "and fine-tuning for research purposes. The suite of sizes is meant for scaling studies."
        ),
        out_of_scope_use=_OPT_OUT_OF_SCOPE,
        evaluation_data=_OPT_EVALUATION,
        limitations=(
            "Like other large language models trained on unfiltered web text, OPT can produce factually wrong "
            "statements with confidence, repetitive text and generation loops, and toxic or stereotyped language, "
            "and it follows declarative instructions poorly. Its training data is mostly English and reflects the "
            "biases of the sources it was drawn from." + (f" {extra_limitation}" if extra_limitation else "")
        ),
        training_compute=compute
        or (
            f"Trained by Meta AI with the metaseq code base on NVIDIA A100 GPUs, using fully sharded data parallelism "
            f"with Megatron-style tensor parallelism in {training_tp} parts, in mixed fp16 precision. The paper does "
            "not report a per-size GPU count for this size; the ~180B-token corpus described in the data card was "
            "used for every size."
        ),
    )


_SMALL_OPT_LIMITATION = (
    "Smaller OPT sizes perform markedly worse on few-shot tasks than the largest ones; use them for scaling curves "
    "and quick experiments rather than as a capability reference."
)


@dataclass(frozen=True)
class _OptSize:
    size: str
    parameters: int
    n_layers: int
    n_heads: int
    hidden_size: int
    training_tp: int


_OPT_SIZES: tuple[_OptSize, ...] = (
    _OptSize("125M", 125_000_000, 12, 12, 768, 2),
    _OptSize("350M", 350_000_000, 24, 16, 1024, 2),
    _OptSize("1.3B", 1_300_000_000, 24, 32, 2048, 2),
    _OptSize("2.7B", 2_700_000_000, 32, 32, 2560, 4),
    _OptSize("6.7B", 6_700_000_000, 32, 32, 4096, 2),
    _OptSize("13B", 13_000_000_000, 40, 40, 5120, 2),
    _OptSize("30B", 30_000_000_000, 48, 56, 7168, 2),
    _OptSize("66B", 66_000_000_000, 64, 72, 9216, 8),
    _OptSize("175B", 175_000_000_000, 96, 96, 12288, 8),
)

_OPT_175B_COMPUTE = (
    "Trained by Meta AI on 992 NVIDIA A100 GPUs with 80GB of memory each, using fully sharded data parallelism "
    "with Megatron-style tensor parallelism in 8 parts and mixed fp16 precision, reaching up to about 147 TFLOP/s "
    "per GPU, for about 33 days of continuous training. Hardware failures and loss divergences forced many "
    "restarts, which the authors documented in a public logbook; the paper estimates the carbon footprint at "
    "about 75 tonnes of CO2-equivalent, about one seventh of GPT-3's."
)


def _opt_summary(spec: _OptSize) -> str:
    figures = (
        f"{spec.n_layers} layers, {spec.n_heads} attention heads, hidden size {spec.hidden_size}, feed-forward "
        f"{4 * spec.hidden_size}; trained in {spec.training_tp} tensor-parallel parts."
    )
    if spec.size == "175B":
        return (
            "The largest OPT model, comparable in size and few-shot performance to GPT-3. Gated: researchers apply "
            "for access under the OPT-175B non-commercial research license; approved applicants download the "
            "original checkpoint as 8 tensor-parallel parts of 124 FSDP shards each (992 files, about 328 GB in "
            f"fp16) with an md5 list. {figures}"
        )
    if spec.size == "350M":
        return (
            "The one OPT size with a different layout: post-LayerNorm blocks (normalisation after the residual "
            "add, with no final layer norm) and 512-wide word embeddings that a project-in matrix widens to the "
            f"1024-wide hidden state and a project-out matrix narrows again before the output layer. {figures} "
            "Open download under the OPT open-model license."
        )
    return f"Open download under the OPT open-model license. {figures}"


def _opt_release(spec: _OptSize, sort_order: int) -> ReleaseData:
    gated = spec.size == "175B"
    if gated:
        card = _opt_card(
            spec.size,
            training_tp=spec.training_tp,
            compute=_OPT_175B_COMPUTE,
            extra_limitation=(
                "The authors found OPT-175B somewhat more likely than GPT-3 to produce toxic language when prompted "
                "with toxic text, which they attribute partly to the Reddit share of the corpus."
            ),
        )
    else:
        small = spec.parameters < 10_000_000_000
        card = _opt_card(
            spec.size, training_tp=spec.training_tp, extra_limitation=_SMALL_OPT_LIMITATION if small else ""
        )
    return ReleaseData(
        slug=f"opt-{spec.size.lower().replace('.', '-')}",  # URL slugs allow no dots: opt-1-3b
        name=f"OPT-{spec.size}",
        family="opt",
        size_label=spec.size,
        access_tier=GATED if gated else OPEN,
        license="opt-175b-license" if gated else "opt-open-license",
        data_card="opt-data",
        summary=_opt_summary(spec),
        parameters=spec.parameters,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        hidden_size=spec.hidden_size,
        ffn_size=4 * spec.hidden_size,
        vocab_size=50272,
        max_positions=2048,
        training_tp=spec.training_tp,
        sort_order=sort_order,
        model_card=card,
    )


@dataclass(frozen=True)
class _LlamaSize:
    size: str
    parameters: int
    n_layers: int
    n_heads: int
    hidden_size: int
    ffn_size: int
    tokens: str
    learning_rate: str
    gpu_hours: str


_LLAMA_SIZES: tuple[_LlamaSize, ...] = (
    _LlamaSize("7B", 6_700_000_000, 32, 32, 4096, 11008, "1.0T", "3.0e-4", "82,432"),
    _LlamaSize("13B", 13_000_000_000, 40, 40, 5120, 13824, "1.0T", "3.0e-4", "135,168"),
    _LlamaSize("33B", 32_500_000_000, 60, 52, 6656, 17920, "1.4T", "1.5e-4", "530,432"),
    _LlamaSize("65B", 65_200_000_000, 80, 64, 8192, 22016, "1.4T", "1.5e-4", "1,022,362"),
)


def _llama_release(spec: _LlamaSize, sort_order: int) -> ReleaseData:
    compute = (
        f"Trained by Meta AI on NVIDIA A100 80GB GPUs for about {spec.gpu_hours} GPU-hours (as reported in the "
        f"LLaMA paper), on {spec.tokens} tokens with AdamW, a cosine schedule peaking at {spec.learning_rate}, and "
        "4M-token batches; training used activation checkpointing, model and sequence parallelism and an efficient "
        "causal attention implementation."
    )
    if spec.size == "65B":
        compute += (
            " On 2048 GPUs the 65B model processed about 380 tokens per second per GPU, so one pass over 1.4T tokens "
            "took about 21 days."
        )
    return ReleaseData(
        slug=f"llama-{spec.size.lower()}",
        name=f"LLaMA-{spec.size}",
        family="llama",
        size_label=spec.size,
        access_tier=GATED,
        license="llama-license",
        data_card="llama-data",
        summary=(
            f"LLaMA with {spec.parameters / 1e9:.1f}B parameters as published: {spec.n_layers} layers, {spec.n_heads} "
            f"heads, hidden size {spec.hidden_size}, SwiGLU feed-forward {spec.ffn_size}; trained on {spec.tokens} "
            "tokens. Gated: apply under the LLaMA non-commercial research license."
        ),
        parameters=spec.parameters,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        hidden_size=spec.hidden_size,
        ffn_size=spec.ffn_size,
        vocab_size=32000,
        max_positions=2048,
        sort_order=sort_order,
        model_card=ModelCardData(
            release_date=LLAMA_RELEASE_DATE,
            version="1.0",
            model_type=(
                f"LLaMA-{spec.size}: decoder-only transformer foundation model with pre-normalisation (RMSNorm), "
                "SwiGLU feed-forward layers and rotary position embeddings; SentencePiece BPE vocabulary of 32000 "
                "entries, 2048-token context. A base model: not instruction-tuned or aligned with human feedback."
            ),
            intended_use=(
                "Research on large language models: question answering, natural language understanding and reading "
                "comprehension, understanding the capabilities and limits of current models and developing methods "
                "to improve them, and evaluating and mitigating biases, toxicity and hallucination."
            ),
            out_of_scope_use=(
                "Commercial use; downstream applications without further risk evaluation and mitigation; use as a "
                "chatbot or assistant facing the public; high-stakes decisions about people; generating harmful or "
                "deceptive content; any use outside the research purpose of the approved application."
            ),
            evaluation_data=(
                "Evaluated by its authors zero- and few-shot on common-sense reasoning (BoolQ, PIQA, SIQA, HellaSwag, "
                "WinoGrande, ARC Easy and Challenge, OpenBookQA), closed-book question answering (Natural Questions, "
                "TriviaQA), reading comprehension (RACE), mathematical reasoning (MATH, GSM8k), code generation "
                "(HumanEval, MBPP) and MMLU, and on RealToxicityPrompts, CrowS-Pairs, WinoGender and TruthfulQA for "
                "toxicity, bias and truthfulness."
            ),
            limitations=(
                "A base model trained on web data: it can generate toxic, offensive or biased text, and confidently "
                "state false information. The authors measured toxicity rising with model size and biases around "
                "religion, age and gender on CrowS-Pairs. Most training data is English, so quality is lower in "
                "other languages."
                + (
                    " The 7B and 13B models saw 1.0T tokens, fewer than the larger sizes."
                    if spec.tokens == "1.0T"
                    else ""
                )
            ),
            training_compute=compute,
        ),
    )


_MOE_OUT_OF_SCOPE = (
    "Commercial use; deployment in products or public-facing services; high-stakes decisions about people; "
    "generating harmful or deceptive content; presenting outputs as Google's GLaM; any use outside the approved "
    "research purpose."
)

_MOE_EVALUATION = (
    "The GLaM paper evaluated its models zero-, one- and few-shot on 29 public NLP benchmarks grouped into "
    "open-domain question answering (e.g. TriviaQA, Natural Questions, WebQuestions), cloze and completion "
    "(LAMBADA, StoryCloze, HellaSwag), Winograd-style tasks, common-sense reasoning (PIQA, ARC), reading "
    "comprehension, SuperGLUE and natural language inference (ANLI). Our lab's evaluation of this release uses "
    "the same benchmark groups."
)

MOE_RELEASES: tuple[ReleaseData, ...] = (
    ReleaseData(
        slug="glam-moe-1-2t",
        name="Sparse MoE 1.2T (GLaM 64B/64E pattern)",
        family="glam-moe",
        size_label="1.2T (64B/64E)",
        access_tier=GATED,
        license="moe-research-license",
        data_card="glam-data",
        summary=(
            "A GLaM-scale sparse model trained and hosted by this platform's lab, with the dimensions the GLaM paper "
            "publishes for GLaM (64B/64E): 64 layers, hidden size 8192, 128 heads, 64 experts in every other "
            "feed-forward layer with top-2 gating, expert width 32768, a 256K-entry vocabulary and 1024-token "
            "training sequences. About 1.2T parameters in all, about 96.6B active per token. Our training stack "
            "builds the experts as SwiGLU blocks of width 21888, which keeps the expert parameter count of the "
            "published two-matrix layout. Not Google's weights."
        ),
        parameters=1_200_000_000_000,
        active_parameters=96_600_000_000,
        n_layers=64,
        n_heads=128,
        hidden_size=8192,
        ffn_size=32768,
        vocab_size=256000,
        max_positions=1024,
        n_experts=64,
        experts_per_token=2,
        moe_every=2,
        sort_order=20,
        model_card=ModelCardData(
            release_date=MOE_RELEASE_DATE,
            version="1.0",
            model_type=(
                "Decoder-only sparse mixture-of-experts transformer in the GLaM pattern: dense attention in every "
                "layer; in every other layer the feed-forward block is replaced by 64 experts, and a softmax gate "
                "routes each token to its top 2 experts and sums their outputs weighted by the gate. A base model."
            ),
            intended_use=(
                "Research on sparse models: routing behaviour and expert specialisation, load balancing, the quality "
                "and energy trade-offs of conditional computation against dense models, efficient serving with "
                "expert parallelism, and general language-model research at this scale."
            ),
            out_of_scope_use=_MOE_OUT_OF_SCOPE,
            evaluation_data=_MOE_EVALUATION,
            limitations=(
                "Shares the failure modes of dense web-trained models: false statements, biased or toxic text, "
                "weaker quality outside English. Routing adds its own: some experts receive far more tokens than "
                "others, and outputs can change when batching changes which tokens compete for the same experts in "
                "implementations with a capacity limit. Serving needs the memory of the full 1.2T parameters even "
                "though each token uses about 8% of them."
            ),
            training_compute=(
                "The GLaM paper reports training GLaM (64B/64E) on 1024 TPU v4 chips, using about one third of the "
                "energy needed to train GPT-3 and about half its inference FLOPs per token. Our lab's replication "
                "uses the tensor- and expert-parallel training stack of this repository."
            ),
        ),
    ),
    ReleaseData(
        slug="moe-small",
        name="Sparse MoE small (0.1B/64E)",
        family="glam-moe",
        size_label="1.9B (0.1B/64E)",
        access_tier=GATED,
        license="moe-research-license",
        data_card="glam-data",
        summary=(
            "A small GLaM-pattern model from this platform's lab, the same shape as the training stack's "
            "glam-0.1b-64e configuration: 12 layers, 12 heads, hidden size 768, 64 SwiGLU experts of width 2048 in "
            "every other layer with top-2 gating, a 32000-entry vocabulary and 1024-token sequences. About 1.92B "
            "parameters in all (counted as built), about 0.16B active per token. Useful for routing studies on a "
            "single GPU."
        ),
        parameters=1_918_028_544,
        active_parameters=162_712_320,
        n_layers=12,
        n_heads=12,
        hidden_size=768,
        ffn_size=2048,
        vocab_size=32000,
        max_positions=1024,
        n_experts=64,
        experts_per_token=2,
        moe_every=2,
        sort_order=10,
        model_card=ModelCardData(
            release_date=MOE_RELEASE_DATE,
            version="1.0",
            model_type=(
                "Decoder-only sparse mixture-of-experts transformer in the GLaM pattern at the scale of GLaM's "
                "smallest (0.1B/64E) model: RMSNorm, rotary positions, SwiGLU experts, top-2 softmax gating in every "
                "other layer. A base model."
            ),
            intended_use=(
                "Research and teaching on sparse models at small scale: routing and load-balancing experiments, "
                "expert-parallel inference and resharding tests, and comparisons with the 1.2T release."
            ),
            out_of_scope_use=_MOE_OUT_OF_SCOPE,
            evaluation_data=_MOE_EVALUATION + " At this size, expect near-chance scores on the harder tasks.",
            limitations=(
                "A small model: its text is often incoherent over long spans and it knows little about the world. "
                "It inherits the biases of its web-derived training mixture, and routing can be unbalanced across "
                "experts."
            ),
            training_compute=(
                "Trained by our lab with this repository's training stack on a single node of data-centre GPUs, on "
                "a far smaller token budget than the 1.2T release, drawn with the same mixture weights."
            ),
        ),
    ),
)

RELEASES: tuple[ReleaseData, ...] = (
    *(_opt_release(spec, order) for order, spec in enumerate(_OPT_SIZES)),
    *(_llama_release(spec, order) for order, spec in enumerate(_LLAMA_SIZES)),
    *MOE_RELEASES,
)

# --- Rejection templates ----------------------------------------------------------------------

REJECTION_TEMPLATES: tuple[RejectionTemplateData, ...] = (
    RejectionTemplateData(
        title="Insufficient detail about research purpose",
        body=(
            "Dear {name}, thank you for applying for access to {release}. We could not approve this application "
            "because the research purpose does not say enough about what you plan to study, which experiments "
            "need this model, and how the results will be shared. You are welcome to apply again with a more "
            "specific description once the waiting period has passed."
        ),
    ),
    RejectionTemplateData(
        title="Commercial use indicated",
        body=(
            "Dear {name}, thank you for applying for access to {release}. The license for {release} allows "
            "non-commercial research only, and your application describes a use in a product, a service or for "
            "commercial advantage. We therefore cannot grant access."
        ),
    ),
    RejectionTemplateData(
        title="Affiliation could not be verified",
        body=(
            "Dear {name}, thank you for applying for access to {release}. We could not verify the affiliation you "
            "gave. Please apply again with your institutional email address, or add a public page (staff listing, "
            "publication, lab website) that shows your affiliation."
        ),
    ),
    RejectionTemplateData(
        title="Outside the license's scope",
        body=(
            "Dear {name}, thank you for applying for access to {release}. The use you describe falls outside what "
            "the license for {release} permits, so we cannot approve the application. The model card lists the "
            "intended and out-of-scope uses."
        ),
    ),
)


def catalog() -> Catalog:
    """The catalog as it stands in this module now (read at call time, so tests can patch the tuples)."""
    return Catalog(
        licenses=LICENSES,
        families=FAMILIES,
        data_cards=DATA_CARDS,
        releases=RELEASES,
        rejection_templates=REJECTION_TEMPLATES,
    )
