from __future__ import annotations

from django.conf import settings
from django.db import models


class AccessTier(models.TextChoices):
    OPEN = "open", "Open download"
    GATED = "gated", "Gated: license application required"


class Architecture(models.TextChoices):
    OPT = "opt", "OPT (decoder-only, LayerNorm, ReLU, learned positions)"
    LLAMA = "llama", "LLaMA (RMSNorm, SwiGLU, rotary positions)"
    MOE = "moe", "Top-2 mixture of experts (GLaM pattern)"


class License(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.name

    @property
    def current_version(self) -> LicenseVersion | None:
        return self.versions.order_by("-published_at", "-pk").first()


class LicenseVersion(models.Model):
    """One immutable text of a license. Publishing a new version requires everyone to accept again."""

    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=20)
    text = models.TextField()
    published_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["license", "version"], name="uniq_license_version")]
        ordering = ["license", "-published_at"]

    def __str__(self) -> str:
        return f"{self.license.name} v{self.version}"


class ModelFamily(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    organization = models.CharField(max_length=100)
    summary = models.TextField()
    architecture = models.CharField(max_length=16, choices=Architecture.choices)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "model families"

    def __str__(self) -> str:
        return self.name


class DataCard(models.Model):
    """What a family was trained on, following the datasheets-for-datasets questions."""

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    motivation = models.TextField()
    # [{"name": str, "share": float (0..1), "description": str}]
    datasets = models.JSONField(default=list)
    size_tokens = models.BigIntegerField(help_text="Training set size in tokens.")
    raw_data = models.TextField(help_text="Is raw data released, and in what form?")
    labels = models.TextField()
    splits = models.TextField()
    collection = models.TextField()
    preprocessing = models.TextField()

    def __str__(self) -> str:
        return self.title


class Release(models.Model):
    family = models.ForeignKey(ModelFamily, on_delete=models.PROTECT, related_name="releases")
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    size_label = models.CharField(max_length=20, help_text="As published, e.g. 175B.")
    access_tier = models.CharField(max_length=8, choices=AccessTier.choices)
    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="releases")
    data_card = models.ForeignKey(DataCard, on_delete=models.PROTECT, related_name="releases")
    summary = models.TextField(blank=True)
    # Architecture, with the published figures.
    parameters = models.BigIntegerField(help_text="Total parameter count as published.")
    active_parameters = models.BigIntegerField(null=True, blank=True, help_text="Per token, for sparse models.")
    n_layers = models.PositiveIntegerField()
    n_heads = models.PositiveIntegerField()
    n_kv_heads = models.PositiveIntegerField()
    hidden_size = models.PositiveIntegerField()
    ffn_size = models.PositiveIntegerField()
    vocab_size = models.PositiveIntegerField()
    max_positions = models.PositiveIntegerField()
    n_experts = models.PositiveIntegerField(null=True, blank=True)
    experts_per_token = models.PositiveIntegerField(null=True, blank=True)
    moe_every = models.PositiveIntegerField(null=True, blank=True, help_text="Every N-th FFN is a MoE layer.")
    training_tp = models.PositiveIntegerField(null=True, blank=True, help_text="Tensor-parallel parts at training.")
    sort_order = models.PositiveIntegerField(default=0)
    is_listed = models.BooleanField(default=True)

    class Meta:
        ordering = ["family__name", "sort_order", "pk"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_gated(self) -> bool:
        return self.access_tier == AccessTier.GATED

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


class ModelCard(models.Model):
    """The model card (Mitchell et al. 2019), one per release."""

    release = models.OneToOneField(Release, on_delete=models.CASCADE, related_name="model_card")
    release_date = models.DateField()
    version = models.CharField(max_length=20)
    model_type = models.TextField()
    intended_use = models.TextField()
    out_of_scope_use = models.TextField()
    evaluation_data = models.TextField()
    limitations = models.TextField()
    training_compute = models.TextField()

    def __str__(self) -> str:
        return f"Model card: {self.release.name}"


class LicenseAcceptance(models.Model):
    """A person accepted one exact license version for one release (click-through or application)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="license_acceptances")
    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="license_acceptances")
    license_version = models.ForeignKey(LicenseVersion, on_delete=models.PROTECT, related_name="acceptances")
    accepted_at = models.DateTimeField(auto_now_add=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "release", "license_version"])]
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.user} accepted {self.license_version} for {self.release}"
