"""How fast is the reviewer queue with 100,000 applications, and is its query count constant?

    .venv/bin/python bench/bench_review_queue.py [--applications 100000] [--requests 30] [--reseed]

Uses its own database: var/bench/review_queue_<N>.sqlite3, or DATABASE_URL when set (e.g. a PostgreSQL
database made for the purpose: --reseed flushes it). Seeding is idempotent: a database that already
holds N applications is reused as it is. The page is fetched through Django's test client as a signed-in
reviewer, so the figures include middleware, the session, the context processors and the template.

Targets: median < 150 ms for a filtered and searched page; the same number of SQL queries at page sizes
10, 50 and 200.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_MEDIAN_MS = 150.0
PAGE_SIZES = (10, 50, 200)
BATCH = 5_000
N_RELEASES = 4

FIRST_NAMES = (
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emil",
    "Fatima",
    "Gustav",
    "Hana",
    "Ivan",
    "Julia",
    "Kenji",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Xavier",
    "Yara",
    "Zoe",
    "Ahmed",
    "Bianca",
    "Carlos",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
)
LAST_NAMES = (
    "Adams",
    "Becker",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Huang",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Müller",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Vogel",
    "Wagner",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Novak",
    "Silva",
    "Moreau",
    "Kim",
)
# (email domain, affiliation, organization type, weight)
INSTITUTIONS = (
    ("uni-heidelberg.de", "Heidelberg University", "academic", 6),
    ("uni-tuebingen.de", "Universität Tübingen", "academic", 4),
    ("tum.de", "Technical University of Munich", "academic", 5),
    ("ethz.ch", "ETH Zurich", "academic", 4),
    ("mit.edu", "Massachusetts Institute of Technology", "academic", 5),
    ("stanford.edu", "Stanford University", "academic", 5),
    ("ox.ac.uk", "University of Oxford", "academic", 4),
    ("inria.fr", "Inria", "government", 3),
    ("tsinghua.edu.cn", "Tsinghua University", "academic", 4),
    ("iitb.ac.in", "IIT Bombay", "academic", 3),
    ("mpg.de", "Max Planck Society", "government", 3),
    ("allenai.org", "Allen Institute for AI", "industry_lab", 2),
    ("research.example.com", "Example Research Lab", "industry_lab", 2),
    ("eff.org", "Electronic Frontier Foundation", "civil_society", 1),
    ("gmail.com", "Independent researcher", "other", 3),
)
COUNTRIES = (
    ("US", 28),
    ("DE", 14),
    ("GB", 9),
    ("CN", 9),
    ("FR", 6),
    ("IN", 6),
    ("CA", 5),
    ("CH", 4),
    ("JP", 4),
    ("NL", 3),
    ("KR", 3),
    ("IT", 3),
    ("ES", 2),
    ("BR", 2),
    ("AU", 2),
)
# Status, weight. Open ones are recent; decided ones spread over two years.
STATUSES = (
    ("submitted", 12),
    ("in_review", 5),
    ("needs_info", 3),
    ("approved", 55),
    ("rejected", 20),
    ("withdrawn", 5),
)
PURPOSE = (
    "We study calibration and factual recall of large language models across scale, comparing predicted "
    "confidence with accuracy on held-out question answering benchmarks for a paper on evaluation methods."
)


def configure(applications: int) -> None:
    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("PORTAL_VAR_DIR", str(bench_dir / "var"))
    os.environ.setdefault("DEBUG", "0")  # as in production: no query log, no debug pages
    if not os.environ.get("DATABASE_URL"):
        os.environ["DATABASE_URL"] = f"sqlite:///{bench_dir / f'review_queue_{applications}.sqlite3'}"
    import django

    django.setup()


def _weighted(rng: random.Random, pairs: tuple[tuple[Any, ...], ...]) -> Any:
    return rng.choices(pairs, weights=[p[-1] for p in pairs])[0]


def seed(*, applications: int, reseed: bool, rng: random.Random) -> tuple[Any, list[Any]]:
    """Releases, applicants, acceptances and applications, bulk-created; reused when already there."""
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from access.models import (
        AccessTier,
        Application,
        Architecture,
        DataCard,
        License,
        LicenseAcceptance,
        LicenseVersion,
        ModelFamily,
        Release,
        User,
    )
    from access.services.accounts import reviewer_group

    call_command("migrate", verbosity=0)
    existing = Application.objects.count()
    if existing and (reseed or existing != applications):
        if not reseed:
            raise SystemExit(
                f"The bench database holds {existing} applications, not {applications}. "
                "Pass --reseed to flush it and seed again."
            )
        call_command("flush", interactive=False, verbosity=0)
        existing = 0
    if existing == applications:
        print(f"Reusing the seeded database ({existing:,} applications).")
        return User.objects.get(email="reviewer@bench.example"), list(Release.objects.order_by("pk"))

    started = time.perf_counter()
    now = timezone.now()
    with transaction.atomic():
        reviewer = User.objects.create_user("reviewer@bench.example", "bench-password-1234", full_name="Bench Reviewer")
        reviewer.groups.add(reviewer_group())
        family = ModelFamily.objects.create(
            slug="opt", name="OPT", organization="Meta AI", summary="s", architecture=Architecture.OPT
        )
        data_card = DataCard.objects.create(
            slug="opt-data",
            title="OPT corpus",
            motivation="m",
            size_tokens=180 * 10**9,
            raw_data="r",
            labels="l",
            splits="s",
            collection="c",
            preprocessing="p",
        )
        releases, versions = [], []
        for index, size in enumerate(("175B", "66B", "30B", "13B")[:N_RELEASES]):
            license_ = License.objects.create(slug=f"opt-{size.lower()}-license", name=f"OPT-{size} license")
            versions.append(
                LicenseVersion.objects.create(
                    license=license_, version="1.0", text="Research only.", published_at=now - timedelta(days=800)
                )
            )
            releases.append(
                Release.objects.create(
                    family=family,
                    slug=f"opt-{size.lower()}",
                    name=f"OPT-{size}",
                    size_label=size,
                    access_tier=AccessTier.GATED,
                    license=license_,
                    data_card=data_card,
                    parameters=10**9,
                    n_layers=12,
                    n_heads=12,
                    n_kv_heads=12,
                    hidden_size=768,
                    ffn_size=3072,
                    vocab_size=50272,
                    max_positions=2048,
                    sort_order=index,
                )
            )

    # Application k is by applicant k // N_RELEASES for release k % N_RELEASES: no one has two open
    # applications for one release, as the partial unique index demands.
    n_users = -(-applications // N_RELEASES)
    people = []
    for index in range(n_users):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        domain, affiliation, org_type, _ = _weighted(rng, INSTITUTIONS)
        country = _weighted(rng, COUNTRIES)[0]
        people.append(
            (f"{first} {last}", f"{first.lower()}.{last.lower()}.{index}@{domain}", affiliation, org_type, country)
        )
    for start in range(0, n_users, BATCH):
        with transaction.atomic():
            User.objects.bulk_create(
                [
                    User(email=email, full_name=name, affiliation=affiliation, password="!bench", email_verified_at=now)
                    for name, email, affiliation, _, _ in people[start : start + BATCH]
                ],
                batch_size=1000,
            )
    user_ids = dict(User.objects.exclude(pk=reviewer.pk).values_list("email", "pk"))

    for start in range(0, applications, BATCH):
        chunk = range(start, min(start + BATCH, applications))
        with transaction.atomic():
            plans = []
            for k in chunk:
                name, email, affiliation, org_type, country = people[k // N_RELEASES]
                status = _weighted(rng, STATUSES)[0]
                if status in ("submitted", "in_review", "needs_info"):
                    submitted = now - timedelta(days=rng.uniform(0, 60))
                    decided = None
                else:
                    submitted = now - timedelta(days=rng.uniform(1, 730))
                    decided = min(now, submitted + timedelta(hours=rng.lognormvariate(3.3, 1.0)))
                plans.append(
                    (k, user_ids[email], name, email, affiliation, org_type, country, status, submitted, decided)
                )
            acceptances = LicenseAcceptance.objects.bulk_create(
                [
                    LicenseAcceptance(
                        user_id=plan[1],
                        release=releases[plan[0] % N_RELEASES],
                        license_version=versions[plan[0] % N_RELEASES],
                        ip_address="192.0.2.1",
                        user_agent="bench",
                    )
                    for plan in plans
                ],
                batch_size=1000,
            )
            Application.objects.bulk_create(
                [
                    Application(
                        applicant_id=user_id,
                        release=releases[k % N_RELEASES],
                        status=status,
                        full_name=name,
                        email=email,
                        affiliation=affiliation,
                        organization_type=org_type,
                        role="Researcher",
                        country=country,
                        research_purpose=PURPOSE,
                        intended_use="Evaluation only.",
                        publications=["doi:10.1234/bench"],
                        license_acceptance=acceptance,
                        non_commercial_attested=True,
                        submitted_ip="192.0.2.1",
                        submitted_at=submitted,
                        decided_at=decided,
                        decided_by=reviewer if decided and status != "withdrawn" else None,
                        reviewer=reviewer if status in ("in_review", "approved", "rejected") else None,
                        rejection_reason="Out of scope." if status == "rejected" else "",
                    )
                    for (
                        k,
                        user_id,
                        name,
                        email,
                        affiliation,
                        org_type,
                        country,
                        status,
                        submitted,
                        decided,
                    ), acceptance in zip(plans, acceptances, strict=True)
                ],
                batch_size=1000,
            )
        print(f"  seeded {chunk.stop:,}/{applications:,} applications", end="\r", flush=True)
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # give the planner statistics, as a long-running database has
    elif connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(f"Seeded {applications:,} applications for {n_users:,} applicants in {time.perf_counter() - started:.1f} s.")
    return reviewer, releases


def _percentile_90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def measure(
    client: Any, url: str, params: dict[str, Any], *, requests: int, warmup: int = 5, cold_metrics: bool = False
) -> dict[str, Any]:
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from access.selectors import REVIEW_METRICS_CACHE_KEY

    for _ in range(warmup):
        assert client.get(url, params).status_code == 200
    timings = []
    for _ in range(requests):
        if cold_metrics:
            cache.delete(REVIEW_METRICS_CACHE_KEY)  # the one request a minute that recomputes the figures
        started = time.perf_counter()
        response = client.get(url, params)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    slowest = sorted(queries.captured_queries, key=lambda q: float(q["time"]), reverse=True)[:3]
    return {
        "median": statistics.median(timings),
        "p90": _percentile_90(timings),
        "matches": response.context["paginator"].count,
        "rows": len(response.context["page"].object_list),
        "slowest": [(float(q["time"]) * 1000, q["sql"]) for q in slowest],
    }


def query_counts(client: Any, url: str, params: dict[str, Any]) -> dict[int, tuple[int, int]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for size in PAGE_SIZES:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, {**params, "per_page": size})
        counts[size] = (len(queries), len(response.context["page"].object_list))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--applications", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per scenario, after 5 warm-up ones")
    parser.add_argument("--reseed", action="store_true", help="flush the bench database and seed it again")
    args = parser.parse_args()
    configure(args.applications)

    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    setup_test_environment(debug=False)  # lets the client hand back the template context (page, paginator)

    reviewer, releases = seed(applications=args.applications, reseed=args.reseed, rng=random.Random(20220503))
    client = Client()
    client.force_login(reviewer)
    url = reverse("review-queue")
    scenarios = {
        "filtered + searched": {"status": "pending", "release": releases[0].slug, "country": "DE", "q": "uni"},
        "default (all pending)": {},
        "all statuses, search": {"status": "all", "q": "tum.de"},
    }
    print(f"\nDatabase: {connection.vendor} ({connection.settings_dict['NAME']}), {args.applications:,} applications")
    print(f"Reviewer queue, {args.requests} timed requests per scenario (page size 50):\n")
    print(f"{'scenario':<24} {'matches':>8} {'median ms':>10} {'p90 ms':>8} {'target ms':>10} {'ratio':>7}")

    def report(name: str, result: dict[str, Any]) -> None:
        print(
            f"{name:<24} {result['matches']:>8,} {result['median']:>10.1f} {result['p90']:>8.1f} "
            f"{TARGET_MEDIAN_MS:>10.0f} {result['median'] / TARGET_MEDIAN_MS:>7.2f}"
        )

    results = {}
    for name, params in scenarios.items():
        results[name] = measure(client, url, {**params, "per_page": 50}, requests=args.requests)
        report(name, results[name])
    report(
        "filtered, cold metrics",
        measure(
            client,
            url,
            {**scenarios["filtered + searched"], "per_page": 50},
            requests=args.requests,
            cold_metrics=True,
        ),
    )
    print("(cold metrics: the figures' 60-second cache dropped before every request, the worst case)")
    counts = query_counts(client, url, scenarios["filtered + searched"])
    constant = len({queries for queries, _ in counts.values()}) == 1
    print("\nSQL queries per page (filtered + searched):")
    for size, (queries, rows) in counts.items():
        print(f"  page size {size:>3}: {queries} queries, {rows} rows")
    print(f"  constant across page sizes: {'yes' if constant else 'NO'} (target: yes)")

    print("\nSlowest queries of one filtered + searched page:")
    for ms, sql in results["filtered + searched"]["slowest"]:
        print(f"  {ms:7.1f} ms  {sql[:160]}{'…' if len(sql) > 160 else ''}")

    headline = results["filtered + searched"]
    met = headline["median"] < TARGET_MEDIAN_MS and constant
    print(
        f"\nResult: median {headline['median']:.1f} ms vs target {TARGET_MEDIAN_MS:.0f} ms "
        f"(ratio {headline['median'] / TARGET_MEDIAN_MS:.2f}); query count constant: {constant}. "
        f"{'Targets met.' if met else 'Targets NOT met.'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
