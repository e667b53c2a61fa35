"""`manage.py seed_catalog`: load the catalog content of `access.catalog_data` into rows.

Idempotent: rows are matched by slug (license versions by license and version, templates by
title), created when missing and updated in place when the data changed; nothing is ever deleted,
so applications, grants and acceptances that point at catalog rows stay valid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction

from access import catalog_data
from access.catalog_data import Catalog
from access.errors import AccessError, Conflict
from access.models import DataCard, License, LicenseVersion, ModelCard, ModelFamily, RejectionTemplate, Release
from access.services.accounts import reviewer_group

M = TypeVar("M", bound=models.Model)

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


@dataclass
class SeedReport:
    """What one run did, per kind of row: {"releases": Counter(created=15), ...}."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def lines(self) -> list[str]:
        return [
            f"{kind}: " + ", ".join(f"{counts[o]} {o}" for o in (CREATED, UPDATED, UNCHANGED) if counts[o])
            for kind, counts in self.outcomes.items()
        ]


def _upsert(model: type[M], lookup: dict[str, Any], values: dict[str, Any]) -> tuple[M, str]:
    """Create the row matching `lookup`, or write only the fields of `values` that differ.

    Foreign keys are passed as `<name>_id` so the comparison needs no extra queries.
    """
    row = model._default_manager.filter(**lookup).first()
    if row is None:
        return model._default_manager.create(**lookup, **values), CREATED
    changed = [name for name, value in values.items() if getattr(row, name) != value]
    if not changed:
        return row, UNCHANGED
    for name in changed:
        setattr(row, name, values[name])
    row.save(update_fields=[name.removesuffix("_id") if name.endswith("_id") else name for name in changed])
    return row, UPDATED


def _seed_license_version(license_: License, data: catalog_data.LicenseVersionData, report: SeedReport) -> None:
    row = LicenseVersion.objects.filter(license=license_, version=data.version).first()
    if row is not None and (row.text != data.text or row.published_at != data.published_at):
        if row.acceptances.exists():
            # An accepted text is a record of what people agreed to: it must never change under them.
            raise Conflict(
                f"The text of {license_.name} v{data.version} in access/catalog_data.py differs from the "
                "published one, which people have already accepted. Leave that version as it is and add the new "
                "text as a new LicenseVersionData with a higher version number (everyone will accept it again)."
            )
    _, outcome = _upsert(
        LicenseVersion,
        {"license": license_, "version": data.version},
        {"text": data.text, "published_at": data.published_at},
    )
    report.add("license versions", outcome)


def seed_catalog(catalog: Catalog | None = None) -> SeedReport:
    """Bring the catalog rows in line with `catalog` (by default, `access.catalog_data` as it is now)."""
    catalog = catalog or catalog_data.catalog()
    report = SeedReport()
    with transaction.atomic():
        licenses: dict[str, License] = {}
        for lic in catalog.licenses:
            licenses[lic.slug], outcome = _upsert(License, {"slug": lic.slug}, {"name": lic.name})
            report.add("licenses", outcome)
            for version in lic.versions:
                _seed_license_version(licenses[lic.slug], version, report)

        families: dict[str, ModelFamily] = {}
        for fam in catalog.families:
            families[fam.slug], outcome = _upsert(
                ModelFamily,
                {"slug": fam.slug},
                {
                    "name": fam.name,
                    "organization": fam.organization,
                    "summary": fam.summary,
                    "architecture": fam.architecture,
                },
            )
            report.add("families", outcome)

        data_cards: dict[str, DataCard] = {}
        for card in catalog.data_cards:
            data_cards[card.slug], outcome = _upsert(
                DataCard,
                {"slug": card.slug},
                {
                    "title": card.title,
                    "motivation": card.motivation,
                    "datasets": [d.as_json() for d in card.datasets],
                    "size_tokens": card.size_tokens,
                    "raw_data": card.raw_data,
                    "labels": card.labels,
                    "splits": card.splits,
                    "collection": card.collection,
                    "preprocessing": card.preprocessing,
                },
            )
            report.add("data cards", outcome)

        for rel in catalog.releases:
            missing = [
                f"{kind} {slug!r}"
                for kind, slug, known in (
                    ("family", rel.family, families),
                    ("license", rel.license, licenses),
                    ("data card", rel.data_card, data_cards),
                )
                if slug not in known
            ]
            if missing:
                raise Conflict(
                    f"Release {rel.slug!r} in access/catalog_data.py names an unknown {', '.join(missing)}: "
                    "add it to the catalog data or fix the slug."
                )
            release, outcome = _upsert(
                Release,
                {"slug": rel.slug},
                {
                    "family_id": families[rel.family].pk,
                    "name": rel.name,
                    "size_label": rel.size_label,
                    "access_tier": rel.access_tier,
                    "license_id": licenses[rel.license].pk,
                    "data_card_id": data_cards[rel.data_card].pk,
                    "summary": rel.summary,
                    "parameters": rel.parameters,
                    "active_parameters": rel.active_parameters,
                    "n_layers": rel.n_layers,
                    "n_heads": rel.n_heads,
                    "n_kv_heads": rel.kv_heads,
                    "hidden_size": rel.hidden_size,
                    "ffn_size": rel.ffn_size,
                    "vocab_size": rel.vocab_size,
                    "max_positions": rel.max_positions,
                    "n_experts": rel.n_experts,
                    "experts_per_token": rel.experts_per_token,
                    "moe_every": rel.moe_every,
                    "training_tp": rel.training_tp,
                    "sort_order": rel.sort_order,
                    "is_listed": rel.is_listed,
                },
            )
            report.add("releases", outcome)
            mc = rel.model_card
            _, outcome = _upsert(
                ModelCard,
                {"release": release},
                {
                    "release_date": mc.release_date,
                    "version": mc.version,
                    "model_type": mc.model_type,
                    "intended_use": mc.intended_use,
                    "out_of_scope_use": mc.out_of_scope_use,
                    "evaluation_data": mc.evaluation_data,
                    "limitations": mc.limitations,
                    "training_compute": mc.training_compute,
                },
            )
            report.add("model cards", outcome)

        # Templates are edited by operators in the admin: create the missing defaults, never overwrite edits.
        for template in catalog.rejection_templates:
            _, created = RejectionTemplate.objects.get_or_create(title=template.title, defaults={"body": template.body})
            report.add("rejection templates", CREATED if created else UNCHANGED)

        reviewer_group()
    return report


class Command(BaseCommand):
    help = "Create or update the model catalog (families, releases, licenses, model and data cards). Safe to re-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing on success.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            report = seed_catalog()
        except AccessError as exc:
            raise CommandError(exc.message) from exc
        if not options["quiet"]:
            for line in report.lines():
                self.stdout.write(f"  {line}")
            self.stdout.write(self.style.SUCCESS("Catalog is up to date."))
