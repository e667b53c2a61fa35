"""Demo checkpoints: a tiny random-weight OPT in transformers format for opt-125m (open) and opt-175b
(gated), imported through the same path as real ones and verified in this process. Idempotent."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from access.models import Release
from artifacts.models import CheckpointState
from artifacts.services import imports, verification

DEMO_RELEASES = ("opt-125m", "opt-175b")
VARIANT = "hf-demo-random"
LABEL = "random weights (demo) — not the real model"
DESCRIPTION = (
    "A 2-layer, 64-wide model with OPT's layout and vocabulary, initialised at random (seed 0). It exists so the "
    "download, resume and checksum machinery can be tried end to end; it produces gibberish."
)


def build_demo_checkpoint(target: Path) -> Path:
    """Write config.json + model.safetensors of the tiny random OPT into `target`."""
    from training import build_model, get_config, save_pretrained

    config = get_config("opt-125m").replace(
        name="opt-demo-random", n_layer=2, n_head=4, n_embd=64, ffn_dim=256, max_seq_len=256
    )
    model = build_model(config, seed=0)
    save_pretrained(model, target)
    return target


def build_demo_tokenizer(target: Path) -> Path:
    """Write tokenizer.json for the demo model, built here with no download: a BPE trained on generated
    pseudo-words (and every printable ASCII character) up to OPT's 50272 ids, <s> <pad> </s> <unk> as
    ids 0-3 like OPT's, so every id the random model samples decodes to visible text in the playground.
    Deterministic: the same bytes on every run, so re-seeding changes nothing."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    syllables = [c + v for c in "bdfghjklmnprstvwz" for v in "aeiou"] + list("aeiou")
    words = [a + b for a in syllables for b in syllables]
    words += [a + b + c for a in syllables for b in syllables for c in syllables][::3]
    corpus = [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=50272,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=list(string.printable.strip()),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(target / "tokenizer.json"))
    return target


class Command(BaseCommand):
    help = "Create the demo checkpoints (tiny random-weight OPT) for opt-125m and opt-175b. Safe to re-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--releases", nargs="*", default=list(DEMO_RELEASES))

    def handle(self, *args: Any, **options: Any) -> None:
        releases = list(Release.objects.filter(slug__in=options["releases"]))
        missing = set(options["releases"]) - {r.slug for r in releases}
        for slug in sorted(missing):
            self.stdout.write(f"Release {slug} does not exist (run seed_catalog first); skipped.")
        if not releases:
            return
        with tempfile.TemporaryDirectory(prefix="openrelease-demo-") as tmp:
            source = build_demo_checkpoint(Path(tmp) / "opt-demo-random")
            # The engine (`python -m inference_worker serve`) reads the tokenizer from the checkpoint.
            build_demo_tokenizer(source)
            for release in releases:
                result = imports.checkpoint_import(
                    release=release,
                    source_uri=str(source),
                    fmt="hf",
                    variant=VARIANT,
                    label=LABEL,
                    description=DESCRIPTION,
                    enqueue=False,
                )
                checkpoint = result.checkpoint
                if not result.unchanged or checkpoint.state != CheckpointState.READY:
                    job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
                    verification.verification_run(job_id=job.pk)
                    checkpoint.refresh_from_db()
                self.stdout.write(f"{checkpoint}: {checkpoint.state} ({checkpoint.files.count()} files)")
