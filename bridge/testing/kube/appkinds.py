"""Create/update rules for Deployments (apps/v1) and PodDisruptionBudgets (policy/v1). Pure.

The counterparts of `pkg/apis/apps/validation.ValidateDeployment` and
`pkg/apis/policy/validation.ValidatePodDisruptionBudget` plus their v1 defaults. No
controller acts on these kinds here: a Deployment's status stays as the client left it
(empty on create), no ReplicaSets or Pods appear, and a budget never counts pods.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.testing.kube.errors import FieldError
from bridge.testing.kube.selectors import LabelSelector, Requirement
from bridge.testing.kube.strategy import default_pod_spec, pod_spec_errors

JSON = dict[str, Any]

_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
_PERCENT = re.compile(r"^[0-9]+%$")
_PERCENT_MSG = (
    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', "
    "regex used for validation is '[0-9]+%')"
)


def label_selector_errors(selector: Any, field: str) -> list[FieldError]:
    """ValidateLabelSelector: operators and the values each operator needs."""
    if not isinstance(selector, dict):
        return [FieldError("Invalid", field, selector, "must be an object")]
    found: list[FieldError] = []
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        at = f"{field}.matchExpressions[{i}]"
        operator = expr.get("operator") if isinstance(expr, dict) else None
        if operator not in _OPERATORS:
            found.append(FieldError("Invalid", f"{at}.operator", operator, "not a valid selector operator"))
            continue
        values = expr.get("values") or []
        if operator in ("In", "NotIn") and not values:
            found.append(
                FieldError("Required", f"{at}.values", None, "must be specified when `operator` is 'In' or 'NotIn'")
            )
        if operator in ("Exists", "DoesNotExist") and values:
            found.append(
                FieldError(
                    "Forbidden",
                    f"{at}.values",
                    None,
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            )
    return found


def as_selector(selector: JSON) -> LabelSelector:
    """A metav1.LabelSelector (matchLabels and matchExpressions) as a matcher."""
    terms = [Requirement(k, "=", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        terms.append(Requirement(expr["key"], _OPERATORS[expr["operator"]], tuple(expr.get("values") or ())))
    return LabelSelector(tuple(terms))


def _int_or_percent_errors(value: Any, field: str) -> list[FieldError]:
    if isinstance(value, bool):
        return [FieldError("Invalid", field, value, "must be an integer or percentage (e.g '5%')")]
    if isinstance(value, int):
        return [FieldError("Invalid", field, value, "must be greater than or equal to 0")] if value < 0 else []
    if not isinstance(value, str) or not _PERCENT.match(value):
        return [FieldError("Invalid", field, value, _PERCENT_MSG)]
    if int(value[:-1]) > 100:
        return [FieldError("Invalid", field, value, "must not be greater than 100%")]
    return []


# --- Deployment ------------------------------------------------------------------------------


def default_deployment(obj: JSON) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template = spec.get("template")
    if isinstance(template, dict):
        meta = template.setdefault("metadata", {})
        if isinstance(meta, dict):
            meta.setdefault("creationTimestamp", None)
        pod_spec = template.get("spec")
        if isinstance(pod_spec, dict):
            default_pod_spec(pod_spec)
    if not isinstance(obj.get("status"), dict):
        obj["status"] = {}


def validate_deployment(obj: JSON, old: JSON | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    found: list[FieldError] = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        found.append(FieldError("Invalid", "spec.replicas", replicas, "must be greater than or equal to 0"))
    selector = spec.get("selector")
    template: JSON = spec["template"] if isinstance(spec.get("template"), dict) else {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if selector is None:
        found.append(FieldError("Required", "spec.selector"))
    else:
        selector_errors = label_selector_errors(selector, "spec.selector")
        found += selector_errors
        if not selector_errors:
            if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                found.append(
                    FieldError("Invalid", "spec.selector", selector, "empty selector is invalid for deployment")
                )
            elif not as_selector(selector).matches(labels):
                found.append(
                    FieldError(
                        "Invalid",
                        "spec.template.metadata.labels",
                        labels,
                        "`selector` does not match template `labels`",
                    )
                )
    if not template:
        found.append(FieldError("Required", "spec.template"))
    else:
        pod_spec = template.get("spec") or {}
        found += pod_spec_errors(pod_spec, "spec.template.spec")
        policy = pod_spec.get("restartPolicy", "Always")
        if policy != "Always":
            found.append(
                FieldError("NotSupported", "spec.template.spec.restartPolicy", policy, 'supported values: "Always"')
            )
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type")
    if kind not in ("Recreate", "RollingUpdate"):
        found.append(
            FieldError("NotSupported", "spec.strategy.type", kind, 'supported values: "Recreate", "RollingUpdate"')
        )
    elif kind == "Recreate" and strategy.get("rollingUpdate") is not None:
        found.append(
            FieldError(
                "Forbidden",
                "spec.strategy.rollingUpdate",
                None,
                "may not be specified when strategy `type` is 'Recreate'",
            )
        )
    for key in ("maxUnavailable", "maxSurge"):
        value = (strategy.get("rollingUpdate") or {}).get(key)
        if value is not None:
            found += _int_or_percent_errors(value, f"spec.strategy.rollingUpdate.{key}")
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        found.append(FieldError("Invalid", "spec.selector", selector, "field is immutable"))
    return found


# --- PodDisruptionBudget -----------------------------------------------------------------------


def default_pod_disruption_budget(obj: JSON) -> None:
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    # The status counters are plain int32s in the Go type: they always serialize.
    for key in ("disruptionsAllowed", "currentHealthy", "desiredHealthy", "expectedPods"):
        status.setdefault(key, 0)


def validate_pod_disruption_budget(obj: JSON, old: JSON | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    found: list[FieldError] = []
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        found.append(FieldError("Invalid", "spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    for key in ("minAvailable", "maxUnavailable"):
        if spec.get(key) is not None:
            found += _int_or_percent_errors(spec[key], f"spec.{key}")
    if spec.get("selector") is not None:
        found += label_selector_errors(spec["selector"], "spec.selector")
    policy = spec.get("unhealthyPodEvictionPolicy")
    if policy is not None and policy not in ("AlwaysAllow", "IfHealthyBudget"):
        found.append(
            FieldError(
                "NotSupported",
                "spec.unhealthyPodEvictionPolicy",
                policy,
                'supported values: "AlwaysAllow", "IfHealthyBudget"',
            )
        )
    return found
