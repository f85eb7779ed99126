"""Generates kiln-dashboard.json (Grafana 10/11, Prometheus datasource). Edit here, then run:

    python deploy/grafana/build_dashboard.py          # rewrites kiln-dashboard.json

tests/deploy/test_dashboard.py fails if the JSON and this file disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("kiln-dashboard.json")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GW = 'namespace="$namespace", job="kiln-gateway"'
TR = 'namespace="$namespace", job="kiln-triton"'
API_ROUTES = 'task="text-generation"'  # every generation route, REST, OpenAI and gRPC
RATE = "[$__rate_interval]"


def q(expr: str, legend: str) -> dict:
    return {"expr": expr, "legendFormat": legend}


def srate(metric: str, selector: str, by: str = "model") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}{RATE}))"


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[dict]:
    return [
        q(
            f"histogram_quantile({x}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}{RATE})))",
            f"p{round(x * 100)} {{{{{by}}}}}",
        )
        for x in qs
    ]


TRITON_REQUESTS = srate("nv_inference_request_success", TR)

# (row title, [(panel title, kind, unit, width, targets, description)])
ROWS = [
    (
        "Overview",
        [
            (
                "Request rate",
                "stat",
                "reqps",
                6,
                [q(f"sum(rate(kiln_requests_total{{{GW}, {API_ROUTES}}}{RATE}))", "req/s")],
                "",
            ),
            (
                "Error ratio (5xx)",
                "stat",
                "percentunit",
                6,
                [q('max(kiln:request_error_ratio:rate5m{namespace="$namespace"})', "5xx")],
                "Recording rule kiln:request_error_ratio:rate5m; alert KilnHighErrorRate above 5%.",
            ),
            (
                "p99 time to first token",
                "stat",
                "s",
                6,
                [q('max(kiln:time_to_first_token_seconds:p99_5m{namespace="$namespace"})', "p99 TTFT")],
                "",
            ),
            (
                "Models ready",
                "stat",
                "short",
                6,
                [q(f"sum by (model) (kiln_model_ready{{{GW}}})", "{{model}}")],
                "Pods with the model loaded and warm.",
            ),
        ],
    ),
    (
        "Traffic and errors",
        [
            (
                "Requests by route and status",
                "timeseries",
                "reqps",
                12,
                [
                    q(
                        srate("kiln_requests_total", f'{GW}, task!="control"', by="route, status"),
                        "{{route}} {{status}}",
                    )
                ],
                "",
            ),
            (
                "Rejected requests by reason",
                "timeseries",
                "reqps",
                12,
                [
                    q(
                        f"sum by (model, reason) (rate(kiln_rejected_requests_total{{{GW}}}{RATE}))",
                        "{{model}} {{reason}}",
                    )
                ],
                "queue_full = 429 (KILN_MAX_QUEUE reached); draining = 503 during shutdown.",
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "Request latency",
                "timeseries",
                "s",
                8,
                quantiles("kiln_request_duration_seconds", "route", f"{GW}, {API_ROUTES}"),
                "End-to-end, arrival to last byte.",
            ),
            (
                "Time to first token (TTFT)",
                "timeseries",
                "s",
                8,
                quantiles("kiln_time_to_first_token_seconds", "model", GW),
                "",
            ),
            (
                "Inter-token latency (ITL)",
                "timeseries",
                "s",
                8,
                quantiles("kiln_inter_token_latency_seconds", "model", GW),
                "",
            ),
        ],
    ),
    (
        "Throughput and engine",
        [
            (
                "Tokens/s",
                "timeseries",
                "short",
                8,
                [
                    q(f"sum by (model) (rate(kiln_generation_tokens_total{{{GW}}}{RATE}))", "generated {{model}}"),
                    q(f"sum by (model) (rate(kiln_prompt_tokens_total{{{GW}}}{RATE}))", "prompt {{model}}"),
                ],
                "",
            ),
            (
                "Queue depth (waiting for a KV slot)",
                "timeseries",
                "short",
                8,
                [
                    q(f"sum by (model) (kiln_queue_depth{{{GW}}})", "waiting {{model}}"),
                    q(f"sum(kiln_requests_in_flight{{{GW}}})", "in flight"),
                ],
                "The KEDA gateway trigger scales on this per pod.",
            ),
            ("Queue time", "timeseries", "s", 8, quantiles("kiln_queue_time_seconds", "model", GW, (0.5, 0.99)), ""),
            (
                "Prefix cache hit rate",
                "timeseries",
                "percentunit",
                8,
                [
                    q(
                        f"sum by (model) (rate(kiln_prefix_cache_hits_total{{{GW}}}{RATE}))"
                        f" / sum by (model) (rate(kiln_prefix_cache_queries_total{{{GW}}}{RATE}))",
                        "{{model}}",
                    )
                ],
                "Share of prompt tokens served from finished sequences' slots instead of being prefilled.",
            ),
            (
                "Batch size",
                "timeseries",
                "short",
                8,
                [
                    *quantiles("kiln_batch_size", "model", GW, (0.5, 0.99)),
                    q(
                        f"{srate('kiln_batch_size_sum', GW)} / {srate('kiln_batch_size_count', GW)}",
                        "mean {{model}}",
                    ),
                ],
                "Sequences per batched decode step.",
            ),
            (
                "KV slot use",
                "timeseries",
                "percentunit",
                8,
                [
                    q(
                        f"sum by (model) (kiln_kv_slots_in_use{{{GW}}}) / sum by (model) (kiln_kv_slots_total{{{GW}}})",
                        "{{model}}",
                    ),
                ],
                "Share of preallocated KV cache slots holding a sequence (all pods).",
            ),
            (
                "Replicas",
                "timeseries",
                "short",
                8,
                [
                    q(
                        'count by (job) (up{namespace="$namespace", job=~"kiln-gateway|kiln-triton"} == 1)',
                        "scraped {{job}}",
                    ),
                    q(
                        "max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas"
                        '{namespace="$namespace", horizontalpodautoscaler=~"keda-hpa-kiln-.*"})',
                        "KEDA desired {{horizontalpodautoscaler}}",
                    ),
                ],
                "Desired replicas need kube-state-metrics (KEDA creates HPAs named keda-hpa-<ScaledObject>).",
            ),
        ],
    ),
    (
        "Image classification",
        [
            (
                "Images/s",
                "timeseries",
                "short",
                12,
                [q(f"sum by (model) (rate(kiln_classify_images_total{{{GW}}}{RATE}))", "{{model}}")],
                "",
            ),
            (
                "Classification latency",
                "timeseries",
                "s",
                12,
                quantiles("kiln_request_duration_seconds", "route", f'{GW}, task="image-classification"', (0.5, 0.99)),
                "End-to-end, REST /classify and gRPC Classify.",
            ),
            (
                "Classifier drift (PSI of predicted classes)",
                "timeseries",
                "short",
                12,
                [q(f"max by (model, pipeline) (kiln_classify_drift_psi{{{GW}}})", "{{model}} {{pipeline}}")],
                "Rolling window against the calibration split; alert KilnClassifierInputDrift above 0.25.",
            ),
            (
                "Classifier drift (KS of confidences)",
                "timeseries",
                "short",
                12,
                [q(f"max by (model, pipeline) (kiln_classify_drift_ks{{{GW}}})", "{{model}} {{pipeline}}")],
                "Rolling window against the calibration split; alert KilnClassifierConfidenceDrift above 0.2.",
            ),
        ],
    ),
    (
        "Triton (gpu overlay)",
        [
            (
                "Triton queue time per request",
                "timeseries",
                "µs",
                6,
                [
                    q(
                        f"{srate('nv_inference_queue_duration_us', TR)} / {TRITON_REQUESTS}",
                        "{{model}}",
                    )
                ],
                "",
            ),
            (
                "Triton compute time per request",
                "timeseries",
                "µs",
                6,
                [
                    q(
                        f"{srate('nv_inference_compute_infer_duration_us', TR)} / {TRITON_REQUESTS}",
                        "{{model}}",
                    )
                ],
                "",
            ),
            (
                "Triton executions/s",
                "timeseries",
                "short",
                6,
                [q(f"sum by (model) (rate(nv_inference_exec_count{{{TR}}}{RATE}))", "{{model}}")],
                "Batched model executions; requests/executions = average batch.",
            ),
            (
                "Triton pending requests",
                "timeseries",
                "short",
                6,
                [q(f"sum by (model) (nv_inference_pending_request_count{{{TR}}})", "{{model}}")],
                "The KEDA Triton trigger scales on this per pod.",
            ),
        ],
    ),
]


def panel(
    pid: int, title: str, kind: str, unit: str, width: int, targets: list[dict], description: str, x: int, y: int
) -> dict:
    height = 4 if kind == "stat" else 8
    out = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": height, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, **t} for i, t in enumerate(targets)],
    }
    if kind == "stat":
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
        }
    else:
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    return out


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for title, kind, unit, width, targets, description in row_panels:
            if x + width > 24:
                x, y, row_h = 0, y + row_h, 0
            p = panel(pid, title, kind, unit, width, targets, description, x, y)
            panels.append(p)
            pid, x, row_h = pid + 1, x + width, max(row_h, p["gridPos"]["h"])
        y += row_h
    return {
        "uid": "kiln-overview",
        "title": "Kiln",
        "description": "Kiln inference gateway, engine, autoscaling and Triton (docs/deploy.md).",
        "tags": ["kiln", "inference"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(kiln_requests_total, namespace)", "refId": "namespace"},
                    "definition": "label_values(kiln_requests_total, namespace)",
                    "current": {"text": "kiln", "value": "kiln"},
                    "refresh": 2,
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(OUT.read_text() != render())
    OUT.write_text(render())
