"""Checks of deploy/: Kubernetes manifests (JSON schemas and cross-references to the server's
flags, health names and metrics), Prometheus config and alert rules (promtool, rule unit
tests), the Grafana dashboard and the docker-compose stack.

Run by CTest as `deploy_manifests`; needs the venv's kubernetes-validate and PyYAML
(tests/python/requirements.txt) and promtool (Debian package prometheus, scripts/deps.sh).
"""
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
# Oldest Kubernetes these manifests target (native gRPC probes are GA since 1.27).
K8S_VERSION = "1.30.0"
APP_LABEL = ("app.kubernetes.io/name", "nvfp4d")
ADAPTER_RULES = "prometheus-adapter-rules.yaml"
ROW_TITLES = ["Traffic", "Latency", "Saturation", "Quality"]
# nvfp4d flags that are std::vector options (all others reject a second occurrence).
REPEATABLE_FLAGS = {"--allowed-root"}


# ------------------------------------------------------------------ sources of truth

def read(path):
    return Path(path).read_text()


def load_all(path):
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


def registered_metrics():
    """{name: type} of every metric server_metrics.cc registers."""
    src = read(ROOT / "server/metrics/server_metrics.cc")
    found = re.findall(r'Build(Counter|Gauge|Histogram)\(\)\s*\.Name\("([^"]+)"\)', src)
    assert found, "no metric registrations found in server_metrics.cc"
    return {name: kind.lower() for kind, name in found}


def series_names():
    """Names a PromQL selector may use: counters and gauges as registered, histograms with
    _bucket/_sum/_count."""
    names = set()
    for name, kind in registered_metrics().items():
        if kind == "histogram":
            names |= {name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(name)
    return names


def metric_refs(expr):
    """nvfp4_* metric names referenced by a PromQL expression (string literals dropped)."""
    return set(re.findall(r"\bnvfp4_[A-Za-z0-9_]+", re.sub(r'"[^"]*"', '""', expr)))


def assert_known_metrics(exprs, where):
    known = series_names()
    refs = set()
    for e in exprs:
        refs |= metric_refs(e)
    unknown = sorted(refs - known)
    assert not unknown, f"{where} references metrics server_metrics.cc does not export: {unknown}"
    return refs


def health_names():
    """(registered as SERVING at start, set NOT_SERVING by Shutdown) in nvfp4_server.cc."""
    src = read(ROOT / "server/nvfp4_server.cc")
    calls = re.findall(r'SetServingStatus\("([^"]*)",\s*(true|false)\)', src)
    serving = {n for n, v in calls if v == "true"}
    drained = {n for n, v in calls if v == "false"}
    assert serving, "no health names found in nvfp4_server.cc"
    return serving, drained


def nvfp4d_flags():
    src = read(ROOT / "server/nvfp4d_main.cc")
    flags = set(re.findall(r'add_option\(\s*"(--[a-z0-9-]+)"', src))
    assert "--drain-timeout" in flags and "--allowed-root" in flags
    return flags


def parse_args(args):
    """['--a', 'x', '--b=y'] -> {'--a': ['x'], '--b': ['y']} (every nvfp4d option takes a value)."""
    out, i = {}, 0
    while i < len(args):
        a = str(args[i])
        assert a.startswith("--"), f"stray argument {a!r} in {args}"
        if "=" in a:
            flag, value = a.split("=", 1)
            i += 1
        else:
            flag, value = a, str(args[i + 1])
            i += 2
        out.setdefault(flag, []).append(value)
    return out


def check_nvfp4d_args(args, where):
    parsed = parse_args(args)
    flags = nvfp4d_flags()
    for flag, values in parsed.items():
        assert flag in flags, f"{where}: nvfp4d has no flag {flag}"
        if flag not in REPEATABLE_FLAGS:
            assert len(values) == 1, f"{where}: {flag} given {len(values)} times"
    return parsed


def port_of(address):
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------------------------ Kubernetes

def manifest_files():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests():
    return [(p, d) for p in manifest_files() for d in load_all(p)]


def one(kind, name=None):
    found = [d for _, d in manifests()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment():
    return one("Deployment", "nvfp4d")


def container(dep=None):
    cs = (dep or deployment())["spec"]["template"]["spec"]["containers"]
    c = [c for c in cs if c["name"] == "nvfp4d"]
    assert len(c) == 1
    return c[0]


def container_ports():
    return {p["name"]: p["containerPort"] for p in container()["ports"]}


def pod_labels():
    return deployment()["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def k8s_validate(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_validates_against_kubernetes_schemas():
    checked = []
    for path, doc in manifests():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRD: test_servicemonitor
        try:
            k8s_validate(doc)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")
        checked.append(doc["kind"])
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "PersistentVolumeClaim", "ConfigMap"):
        assert kind in checked, f"no {kind} validated"


def test_strict_validation_rejects_unknown_fields():
    dep = copy.deepcopy(deployment())
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(dep)


def test_manifests_are_labelled_and_namespace_less():
    for path, doc in manifests():
        md = doc["metadata"]
        assert "namespace" not in md, f"{path.name}: {doc['kind']} sets a namespace"
        assert md.get("labels", {}).get(APP_LABEL[0]) == APP_LABEL[1], \
            f"{path.name}: {doc['kind']}/{md['name']} lacks {APP_LABEL[0]}: {APP_LABEL[1]}"


def test_kustomization_lists_the_manifests():
    k = yaml.safe_load(read(K8S / "kustomization.yaml"))
    listed = set(k["resources"])
    for r in listed:
        assert (K8S / r).is_file(), f"kustomization lists missing {r}"
    expected = {p.name for p in manifest_files()} - {ADAPTER_RULES}
    assert listed == expected, f"kustomization resources {sorted(listed)} != {sorted(expected)}"


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert "Deployment" in kinds and "HorizontalPodAutoscaler" in kinds


def test_deployment_image_command_and_flags():
    c = container()
    assert c["image"].startswith("nvfp4-scalesweep/nvfp4d:")
    assert c["command"] == ["nvfp4d"], "command must override an ENTRYPOINT carrying flags"
    args = check_nvfp4d_args(c["args"], "deployment")
    ports = container_ports()
    assert port_of(args["--listen"][0]) == ports["grpc"]
    assert args["--listen"][0].startswith("0.0.0.0:")
    assert port_of(args["--metrics-listen"][0]) == ports["metrics"]
    assert args["--metrics-listen"][0].startswith("0.0.0.0:")
    # The pod requests a GPU: without one it must fail, not fall back to the CPU engine.
    assert args["--device"] == ["cuda"]
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_termination_grace_exceeds_drain():
    dep = deployment()
    args = parse_args(container(dep)["args"])
    drain = float(args["--drain-timeout"][0])
    pre_stop = 0.0
    exec_ = container(dep).get("lifecycle", {}).get("preStop", {}).get("exec")
    if exec_:
        assert exec_["command"][0] == "sleep"
        pre_stop = float(exec_["command"][1])
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain + pre_stop, f"grace {grace} s <= preStop {pre_stop} + drain {drain}"


def test_probes_use_registered_health_names_and_container_ports():
    c = container()
    serving, drained = health_names()
    ports = set(container_ports().values())
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c[name]
        assert "grpc" in probe, f"{name} is not a gRPC probe"
        assert probe["grpc"]["port"] in ports, f"{name} port is no container port"
        assert probe["grpc"]["service"] in serving, \
            f"{name} service {probe['grpc']['service']!r} not registered in nvfp4_server.cc"
    # Liveness must survive the drain, readiness must fail during it.
    for name in ("startupProbe", "livenessProbe"):
        assert c[name]["grpc"]["service"] not in drained, f"{name} would fail while draining"
    assert c["readinessProbe"]["grpc"]["service"] in drained, \
        "readiness must use a health name that goes NOT_SERVING on drain"


def test_resources_and_security():
    dep = deployment()
    c = container(dep)
    limits = c["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1
    for key in ("cpu", "memory"):
        assert key in c["resources"]["requests"] and key in limits
    mem = limits["memory"]
    m = re.fullmatch(r"(\d+)(Mi|Gi)", mem)
    assert m, f"memory limit {mem} not in Mi/Gi"
    limit_mib = int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)
    args = parse_args(c["args"])
    budget_mib = int(args.get("--memory-mib", ["8192"])[0])
    assert limit_mib > budget_mib, f"memory limit {mem} <= --memory-mib {budget_mib}"

    pod_sc = dep["spec"]["template"]["spec"]["securityContext"]
    sc = c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == container_ports()["metrics"]
    assert ann["prometheus.io/path"] == "/metrics"


def test_volumes_allowed_roots_and_pvcs():
    dep = deployment()
    c = container(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    pvcs = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "PersistentVolumeClaim"}

    models, outputs = mounts["/models"], mounts["/outputs"]
    assert models.get("readOnly") is True
    assert volumes[models["name"]]["persistentVolumeClaim"].get("readOnly") is True
    assert not outputs.get("readOnly", False)
    assert not volumes[outputs["name"]]["persistentVolumeClaim"].get("readOnly", False)
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be writable (read-only root)"

    claim_mounts = {m["mountPath"] for m in c["volumeMounts"]
                    if "persistentVolumeClaim" in volumes[m["name"]]}
    roots = set(parse_args(c["args"])["--allowed-root"])
    assert roots == claim_mounts == {"/models", "/outputs"}

    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            assert claim in pvcs, f"no PersistentVolumeClaim {claim}"
            assert pvcs[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
    for m in c["volumeMounts"]:
        assert m["name"] in volumes


def test_services_select_the_pods():
    dep = deployment()
    assert selects(dep["spec"]["selector"]["matchLabels"], pod_labels())
    ports = container_ports()

    headless = one("Service", "nvfp4d")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels())
    (grpc,) = headless["spec"]["ports"]
    assert grpc["port"] == ports["grpc"] and grpc["targetPort"] in ("grpc", ports["grpc"])

    metrics = one("Service", "nvfp4d-metrics")
    assert selects(metrics["spec"]["selector"], pod_labels())
    (mp,) = metrics["spec"]["ports"]
    assert mp["targetPort"] in ("metrics", ports["metrics"]) and mp["port"] == ports["metrics"]

    pdb = one("PodDisruptionBudget", "nvfp4d")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels())
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_servicemonitor():
    sm = one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    sel = sm["spec"]["selector"]["matchLabels"]
    metrics = one("Service", "nvfp4d-metrics")
    headless = one("Service", "nvfp4d")
    assert selects(sel, metrics["metadata"]["labels"]), "ServiceMonitor misses nvfp4d-metrics"
    assert not selects(sel, headless["metadata"]["labels"]), "ServiceMonitor also selects nvfp4d"
    port_names = {p["name"] for p in metrics["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "no endpoints"
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names, f"endpoint port {ep['port']} not on nvfp4d-metrics"
        assert ep.get("path", "/metrics") == "/metrics"


def adapter_rules():
    cm = load_all(K8S / ADAPTER_RULES)
    assert len(cm) == 1 and cm[0]["kind"] == "ConfigMap"
    rules = yaml.safe_load(cm[0]["data"]["config.yaml"])["rules"]
    assert rules
    return rules


def adapter_exposed_metrics():
    """{exposed name: source series} of the adapter rules (name.matches/as applied)."""
    out = {}
    for rule in adapter_rules():
        series = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
        name = rule.get("name", {})
        as_ = re.sub(r"\$\{?(\d+)\}?", r"\\\1", name.get("as", "")) or r"\g<0>"
        exposed = re.sub(name.get("matches", ".*"), as_, series) if name else series
        out[exposed] = series
    return out


def test_prometheus_adapter_rule():
    gauges = {n for n, k in registered_metrics().items() if k == "gauge"}
    for rule in adapter_rules():
        assert_known_metrics([rule["seriesQuery"], rule["metricsQuery"]], "adapter rule")
        series = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in gauges, f"{series} is not a gauge"
        ov = rule["resources"]["overrides"]
        assert ov["namespace"]["resource"] == "namespace" and ov["pod"]["resource"] == "pod"
        for token in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert token in rule["metricsQuery"]
    assert "nvfp4_queue_depth" in adapter_exposed_metrics().values()


def test_hpa_targets_deployment_on_adapter_metric():
    hpa = one("HorizontalPodAutoscaler", "nvfp4d")
    spec = hpa["spec"]
    dep = deployment()
    ref = spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment",
                                                             dep["metadata"]["name"])
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 8)
    exposed = adapter_exposed_metrics()
    assert spec["metrics"]
    for m in spec["metrics"]:
        assert m["type"] == "Pods"
        assert m["pods"]["metric"]["name"] in exposed, \
            f"HPA metric {m['pods']['metric']['name']} not exposed by the adapter ({list(exposed)})"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def apply_json_patch(doc, ops):
    """The subset of RFC 6902 the patches use: add (with '-' to append) and replace."""
    doc = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("add", "replace"), op
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = doc
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            if last == "-":
                target.append(op["value"])
            elif op["op"] == "add":
                target.insert(int(last), op["value"])
            else:
                target[int(last)] = op["value"]
        else:
            target[last] = op["value"]
    return doc


def test_auth_token_patch():
    ops = yaml.safe_load(read(K8S / "patches/auth-token.yaml"))
    dep = apply_json_patch(deployment(), ops)
    k8s_validate(dep)
    c = container(dep)
    args = check_nvfp4d_args(c["args"], "auth-token patch")
    token_file = args["--auth-token-file"][0]
    mount = [m for m in c["volumeMounts"] if token_file.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mount) == 1 and mount[0]["readOnly"] is True
    vol = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount[0]["name"]]
    assert len(vol) == 1 and "secret" in vol[0]
    items = vol[0]["secret"].get("items")
    rel = token_file[len(mount[0]["mountPath"].rstrip("/")) + 1:]
    assert items is None or rel in {i["path"] for i in items}
    # The kustomization mentions the patch (commented out: the token is optional).
    assert "patches/auth-token.yaml" in read(K8S / "kustomization.yaml")


# ------------------------------------------------------------------ Prometheus

def promtool():
    tool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(tool).exists(), "promtool missing: install the Debian package prometheus (scripts/deps.sh)"
    return tool


def run_promtool(*args, cwd=PROM):
    out = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_promtool_check_config():
    rc, out = run_promtool("check", "config", PROM / "prometheus.yml")
    assert rc == 0, out


def test_promtool_check_kubernetes_config(tmp_path):
    path = PROM / "prometheus-kubernetes.yml"
    rc, out = run_promtool("check", "config", path)
    if rc != 0 and "kubernetes_sd_configs not found" in out:
        # Debian's promtool is built without Kubernetes discovery: check everything else
        # (relabel rules, rule files) with the discovery swapped for a static target.
        cfg = yaml.safe_load(read(path))
        for job in cfg["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["placeholder:9400"]}]
        (tmp_path / path.name).write_text(yaml.safe_dump(cfg))
        for rf in cfg["rule_files"]:
            shutil.copy(PROM / rf, tmp_path / rf)
        rc, out = run_promtool("check", "config", tmp_path / path.name, cwd=tmp_path)
    assert rc == 0, out


def test_promtool_check_and_test_rules():
    rc, out = run_promtool("check", "rules", PROM / "nvfp4-alerts.yml")
    assert rc == 0, out
    rc, out = run_promtool("test", "rules", PROM / "nvfp4-alerts.test.yml")
    assert rc == 0, out
    tests = yaml.safe_load(read(PROM / "nvfp4-alerts.test.yml"))["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert "Nvfp4dHighErrorRatio" in fired


def alert_rules():
    groups = yaml.safe_load(read(PROM / "nvfp4-alerts.yml"))["groups"]
    return [r for g in groups for r in g["rules"]]


def test_alert_rules_use_exported_metrics():
    rules = alert_rules()
    names = {r.get("alert") for r in rules}
    for needed in ("Nvfp4dHighErrorRatio", "Nvfp4dQueueNearlyFull", "Nvfp4dAdmissionRejections",
                   "Nvfp4dNmseRegression", "Nvfp4dInstanceDown"):
        assert needed in names
    refs = assert_known_metrics([r["expr"] for r in rules], "nvfp4-alerts.yml")
    for m in ("nvfp4_jobs_total", "nvfp4_queue_depth", "nvfp4_admission_rejections_total",
              "nvfp4_tensor_nmse_bucket"):
        assert m in refs
    for r in rules:
        if "alert" in r:
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert r["annotations"]["summary"]


def scrape_job_names():
    jobs = []
    for f in ("prometheus.yml", "prometheus-kubernetes.yml"):
        jobs += [j["job_name"] for j in yaml.safe_load(read(PROM / f))["scrape_configs"]]
    # The Prometheus Operator names a ServiceMonitor's job after the Service.
    jobs.append(one("Service", "nvfp4d-metrics")["metadata"]["name"])
    return jobs


def test_alert_job_matchers_cover_every_scrape_job():
    regexes = set()
    for r in alert_rules():
        regexes |= set(re.findall(r'job=~"([^"]+)"', r["expr"]))
        assert 'job="' not in r["expr"], "match jobs by regex so every scrape flavour is covered"
    assert regexes
    for job in scrape_job_names():
        for rx in regexes:
            assert re.fullmatch(rx, job), f"job {job} escapes the alert matcher {rx}"


def test_kubernetes_scrape_job_matches_the_pods():
    cfg = yaml.safe_load(read(PROM / "prometheus-kubernetes.yml"))
    (job,) = cfg["scrape_configs"]
    ann = deployment()["spec"]["template"]["metadata"]["annotations"]
    meta = {"__meta_kubernetes_pod_container_port_name": "metrics",
            "__meta_kubernetes_pod_phase": "Running"}
    for k, v in pod_labels().items():
        meta["__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", k)] = v
    for k, v in ann.items():
        meta["__meta_kubernetes_pod_annotation_" + re.sub(r"[^A-Za-z0-9_]", "_", k)] = v
    meta["__address__"] = "10.0.0.7:9400"
    labels = dict(meta)
    for rc in job["relabel_configs"]:
        value = ";".join(labels.get(s, "") for s in rc.get("source_labels", []))
        rx = rc.get("regex", "(.*)")
        action = rc.get("action", "replace")
        m = re.fullmatch(rx, value)
        if action == "keep":
            assert m, f"pod dropped by keep {rc['source_labels']} ~ {rx}"
        elif action == "drop":
            assert not m, f"pod dropped by drop {rc['source_labels']} ~ {rx}"
        elif action == "replace" and m:
            repl = re.sub(r"\$\{?(\d+)\}?", r"\\\1", rc.get("replacement", "$1"))
            labels[rc["target_label"]] = m.expand(repl)
    assert labels.get("__metrics_path__") == ann["prometheus.io/path"]
    assert labels["__address__"] == f"10.0.0.7:{ann['prometheus.io/port']}"
    assert "namespace" in labels and "pod" in labels  # prometheus-adapter's resource labels


# ------------------------------------------------------------------ Grafana

def dashboard():
    return json.loads(read(GRAFANA / "nvfp4d-dashboard.json"))


def dashboard_exprs(d):
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def test_dashboard_structure():
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert [p["title"] for p in d["panels"] if p["type"] == "row"] == ROW_TITLES
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    uses_var = ("${datasource}", "$datasource")
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for p in panels:
        assert p["datasource"]["uid"] in uses_var, f"panel {p['title']!r} ignores $datasource"
        assert p["targets"], f"panel {p['title']!r} has no target"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']!r} has an empty expr"
            if "datasource" in t:
                assert t["datasource"]["uid"] in uses_var
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] in uses_var
    # Every $variable an expression uses is defined (or one of Grafana's own).
    builtins = {"__rate_interval", "__interval", "__range"}
    for e in dashboard_exprs(d):
        for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", e):
            assert var in variables or var in builtins, f"undefined ${var} in {e}"


def test_dashboard_rows_cover_their_topics():
    d = dashboard()
    by_row, current = {}, None
    for p in d["panels"]:
        if p["type"] == "row":
            current = p["title"]
            continue
        by_row.setdefault(current, set()).update(
            metric_refs(" ".join(t["expr"] for t in p["targets"])))
    expect = {
        "Traffic": {"nvfp4_jobs_total", "nvfp4_input_bytes_total", "nvfp4_output_bytes_total",
                    "nvfp4_elements_quantized_total"},
        "Latency": {"nvfp4_job_duration_seconds_bucket", "nvfp4_queue_wait_seconds_bucket"},
        "Saturation": {"nvfp4_queue_depth", "nvfp4_jobs_in_flight", "nvfp4_memory_reserved_bytes",
                       "nvfp4_gpu_memory_used_bytes"},
        "Quality": {"nvfp4_tensor_nmse_bucket", "nvfp4_tensor_gain_vs_absmax_ratio_bucket"},
    }
    for row, metrics in expect.items():
        missing = metrics - by_row.get(row, set())
        assert not missing, f"row {row} lacks {missing}"


def test_dashboard_queries_use_exported_metrics_and_parse(tmp_path):
    d = dashboard()
    exprs = dashboard_exprs(d)
    assert_known_metrics(exprs, "nvfp4d-dashboard.json")
    # PromQL syntax through promtool: every panel query as a recording rule, with Grafana's
    # variables replaced by plausible values.
    subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
             "$instance": ".*", "$memory_budget_mib": "8192"}
    rules = []
    for i, p in enumerate(x for x in d["panels"] if x["type"] != "row"):
        for t in p["targets"]:
            e = t["expr"]
            for k, v in subst.items():
                e = e.replace(k, v)
            rules.append({"record": f"dashboard:panel{i}:{t['refId']}", "expr": e})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    rc, out = run_promtool("check", "rules", path, cwd=tmp_path)
    assert rc == 0, out


def test_grafana_provisioning():
    ds = yaml.safe_load(read(GRAFANA / "provisioning/datasources/prometheus.yml"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load(read(GRAFANA / "provisioning/dashboards/nvfp4d.yml"))
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load(read(DEPLOY / "docker-compose.yml"))
    mounts = [v.split(":") for v in compose["services"]["grafana"]["volumes"]]
    dash_target = [t for s, t, *_ in mounts if s.endswith("nvfp4d-dashboard.json")]
    assert dash_target and Path(dash_target[0]).parent == Path(provider["options"]["path"])
    assert ["./grafana/provisioning", "/etc/grafana/provisioning", "ro"] in mounts


# ------------------------------------------------------------------ docker-compose

def test_docker_compose():
    compose = yaml.safe_load(read(DEPLOY / "docker-compose.yml"))
    services = compose["services"]
    assert {"nvfp4d", "prometheus", "grafana"} <= set(services)

    nv = services["nvfp4d"]
    ctx = (DEPLOY / nv["build"]["context"]).resolve()
    assert (ctx / nv["build"]["dockerfile"]).is_file()
    assert str(nv["build"]["args"]["CUDA"]) == "0"
    assert "healthcheck" not in nv, "the image's HEALTHCHECK is used"
    assert nv["entrypoint"] == ["nvfp4d"]
    args = check_nvfp4d_args(nv["command"], "docker-compose")
    assert set(args["--allowed-root"]) == {"/models", "/outputs"}
    vols = [v.split(":") for v in nv["volumes"]]
    assert ["./models", "/models", "ro"] in vols
    assert ["./outputs", "/outputs"] in vols
    grace = re.fullmatch(r"(\d+)s", nv["stop_grace_period"])
    assert int(grace.group(1)) > float(args["--drain-timeout"][0])

    # The compose Prometheus scrapes the compose nvfp4d's metrics port.
    prom = yaml.safe_load(read(PROM / "prometheus.yml"))
    targets = [t for j in prom["scrape_configs"] for s in j.get("static_configs", [])
               for t in s["targets"]]
    assert f"nvfp4d:{port_of(args['--metrics-listen'][0])}" in targets
    assert ["./prometheus", "/etc/prometheus", "ro"] in [
        v.split(":") for v in services["prometheus"]["volumes"]]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    # Every bind mount's host path exists.
    for svc in services.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"docker-compose mounts missing {src}"
