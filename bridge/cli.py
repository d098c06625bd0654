"""The `bridge` command: run, demo, check-config, explain, purge, and the two test servers.

Every server command accepts port 0, prints the address it actually bound, and exits 0
on SIGTERM or SIGINT after an orderly stop. Bad settings exit 2 with one line naming the
key and the value; no traceback reaches the user for an error they can fix.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from bridge import config
from bridge.errors import BridgeError, ConfigError

log = logging.getLogger("bridge")

# The demo's data ships inside the package (examples/demo links here), so an installed
# wheel runs `bridge demo` from any directory.
DEMO_DATA = resources.files("bridge") / "demo"

# Flag -> dotted setting, for `run` and `check-config`.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--kubeconfig": ("kubernetes.kubeconfig", "kubeconfig file (default: KUBECONFIG, "
                                              "in-cluster, ~/.kube/config)"),
    "--context": ("kubernetes.context", "kubeconfig context"),
    "--consul-addr": ("consul.address", "Consul HTTP API address, http(s)://HOST:PORT"),
    "--cluster-id": ("cluster_id", "this cluster's id (owner marker in Consul)"),
    "--dns-listen": ("dns.listen", "DNS address, HOST:PORT (UDP and TCP)"),
    "--http-listen": ("http.listen", "health/metrics address, HOST:PORT"),
    "--log-level": ("log.level", "debug, info, warning or error"),
    "--log-format": ("log.format", "text or json"),
}


def _add_setting_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    for flag, (key, help_text) in SETTING_FLAGS.items():
        if only is None or flag in only:
            parser.add_argument(flag, dest=key.replace(".", "__"), metavar="VALUE",
                                help=help_text)


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key.replace(".", "__"), None)
            for key, _ in SETTING_FLAGS.values()}


_STOP = threading.Event()


def _install_signal_handlers() -> None:
    """SIGTERM and SIGINT end the command in order, from the moment it starts."""

    def handler(signum: int, frame: object) -> None:
        _STOP.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait_for_signal() -> None:
    # Python runs the handler in the main thread, but the kernel may deliver the signal to
    # any thread, and then a wait without a timeout is never interrupted: wake up often
    # enough that a stop starts within 0.1 s.
    while not _STOP.wait(0.1):
        pass


def _say(text: str) -> None:
    print(text, flush=True)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.build(config_file=args.config, flags=_flags(args))
    sys.stdout.write(config.describe(settings))
    return 0


def _serve_app(settings: config.Settings, banner: Callable[[Any], None] | None = None) -> int:
    from bridge import logs, memory_policy
    from bridge.app import App

    logs.configure(settings.log.level, settings.log.format,
                   secrets=[settings.consul.token, config.token(settings.consul)])
    # The DNS threads wait on sockets and hand the GIL back constantly; with Python's default
    # 5 ms switch interval a busy sync thread would hold every query up for that long.
    sys.setswitchinterval(0.001)
    memory_policy.limit_arenas()
    app = App(settings)
    app.start()
    for host, port in app.dns.addresses:
        _say(f"dns listening on {_fmt(host, port)} (udp, tcp)")
    _say(f"http listening on {_fmt(*app.http.address)} (/healthz, /readyz, /metrics, /status)")
    if banner:
        banner(app)
    try:
        _wait_for_signal()
    finally:
        app.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = config.build(config_file=args.config, flags=_flags(args))
    return _serve_app(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.testing.consul import ConsulServer
    from bridge.testing.kube import KubeAPIServer

    workdir = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    k8s_host, k8s_port = config.parse_hostport(args.k8s_listen)
    consul_host, consul_port = config.parse_hostport(args.consul_listen)
    kube = KubeAPIServer(host=k8s_host, port=k8s_port)
    consul = ConsulServer(host=consul_host, port=consul_port)
    kube.start()
    consul.start()
    try:
        with contextlib.ExitStack() as files:
            kube.load_manifests(files.enter_context(resources.as_file(DEMO_DATA / "kubernetes.yaml")))
            consul.load(files.enter_context(resources.as_file(DEMO_DATA / "consul.yaml")))
        kubeconfig = workdir / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        flags = {
            "kubernetes.kubeconfig": str(kubeconfig),
            "consul.address": consul.url,
            "cluster_id": "demo",
            "sync.to_k8s": True,
            "dns.listen": args.dns_listen,
            "dns.consul_domain": "consul",
            "dns.pods": "insecure",
            "http.listen": args.http_listen,
            "log.level": args.log_level,
            "log.format": args.log_format,
        }
        # The demo is self-contained: only its own flags count, not the caller's environment.
        settings = config.build(environ={}, flags=flags)
        _say(f"kubernetes API (test server) at {kube.url}; kubeconfig {kubeconfig}")
        _say(f"consul API (test server) at {consul.url}")

        def banner(app: Any) -> None:
            host, port = app.dns.addresses[0]
            server = f"@{host} -p {port}"
            deadline = time.monotonic() + 20
            while not app.ready and not _STOP.is_set() and time.monotonic() < deadline:
                _STOP.wait(0.05)
            if _STOP.is_set():
                return
            if app.ready:
                _say("ready")
            else:
                _say("warning: not ready after 20s: " + ", ".join(app.waiting_for()))
            _say("try:")
            _say(f"  dig {server} php-apache-svc.default.svc.cluster.local")
            _say(f"  dig {server} billing.consul.svc.cluster.local")
            _say(f"  curl {consul.url}/v1/catalog/service/php-apache-svc")
            _say(f"  kubectl --kubeconfig {kubeconfig} get services,endpointslices -A")
            _say("stop with Ctrl-C")

        return _serve_app(settings, banner)
    finally:
        kube.stop()
        consul.stop()


EXPLAIN_UNKNOWN = 3  # `bridge explain`'s exit status for a name the bridge does not know


def cmd_explain(args: argparse.Namespace) -> int:
    """Asks a running bridge's HTTP endpoint why NAME answers what it does."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from bridge.explain.text import render

    host, port = config.parse_hostport(args.server)
    url = f"http://{_fmt(host, port)}/explain?{urllib.parse.urlencode({'name': args.name})}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        print(f"bridge: {url}: {exc.code} {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"bridge: cannot reach the bridge at {args.server}: {reason}", file=sys.stderr)
        return 1
    explanation = json.loads(raw)
    if args.json:
        sys.stdout.write(raw.decode())
    else:
        sys.stdout.write(render(explanation))
    return 0 if explanation.get("known") else EXPLAIN_UNKNOWN


def cmd_purge(args: argparse.Namespace) -> int:
    from bridge import logs, purge

    if not (args.cluster_id or (args.config and "cluster_id" in config.read_file(args.config))
            or "cluster_id" in config.read_env(os.environ)):
        # Deleting is too much to do for a cluster id taken by default.
        raise ConfigError("cluster_id", "", "say which cluster's entries to purge: "
                          "--cluster-id ID, or cluster_id in --config")
    settings = config.build(config_file=args.config, flags=_flags(args))
    # Its output is its lines; the clients' own logs only when asked for (--log-level).
    logs.configure(settings.log.level if args.log__level else "critical", settings.log.format,
                   secrets=[settings.consul.token, config.token(settings.consul)])
    return purge.run(settings, yes=args.yes, say=_say)


def _serve_fake(server: Any, name: str, loads: Sequence[str], loader: str,
                after_start: Callable[[], None] | None = None) -> int:
    server.start()
    try:
        for path in loads:
            getattr(server, loader)(path)
        if after_start:
            after_start()
        _say(f"{name} listening on {server.url}")
        _wait_for_signal()
    finally:
        server.stop()
    return 0


def cmd_fake_k8s(args: argparse.Namespace) -> int:
    from bridge.testing.kube import KubeAPIServer

    if (args.write_serviceaccount is None) != (args.serviceaccount is None):
        raise ConfigError("--write-serviceaccount", args.write_serviceaccount,
                          "goes together with --serviceaccount NAMESPACE/NAME")
    if args.write_serviceaccount and not args.tls:
        raise ConfigError("--write-serviceaccount", args.write_serviceaccount,
                          "needs --tls (the volume carries the server's ca.crt)")
    host, port = config.parse_hostport(args.listen)
    server = KubeAPIServer(host=host, port=port, tls=args.tls, token_grace=args.token_grace)

    def write() -> None:
        if args.write_kubeconfig:
            server.write_kubeconfig(args.write_kubeconfig)
            _say(f"kubeconfig written to {args.write_kubeconfig}")
        if args.write_serviceaccount:
            namespace, name = args.serviceaccount
            server.write_service_account(args.write_serviceaccount, namespace, name)
            _say(f"service account {namespace}/{name} token written to {args.write_serviceaccount}")

    return _serve_fake(server, "fake-k8s", args.load, "load_manifests", write)


def _serviceaccount_arg(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME")
    return namespace, name


def _seconds_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must not be negative")
    return seconds


def cmd_fake_consul(args: argparse.Namespace) -> int:
    from bridge.testing.consul import ConsulServer

    for flag, value in (("--verify-incoming", args.verify_incoming), ("--write-tls", args.write_tls),
                        ("--tls-name", args.tls_name)):
        if value and not args.tls:
            raise ConfigError(flag, value, "needs --tls")
    host, port = config.parse_hostport(args.listen)
    server = ConsulServer(host=host, port=port, tls=args.tls, verify_incoming=args.verify_incoming,
                          tls_names=args.tls_name, acl_master_token=args.acl_initial_management_token,
                          acl_default_policy=args.acl_default_policy,
                          http_max_conns_per_client=args.http_max_conns_per_client)

    def write() -> None:
        if args.write_tls and server.tls is not None:
            server.tls.write(args.write_tls)
            _say(f"ca.pem, client.pem and client-key.pem written to {args.write_tls}")

    return _serve_fake(server, "fake-consul", args.load, "load", write)


def _listen_arg(value: str) -> str:
    try:
        config.parse_hostport(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bridge", description="Kubernetes <-> Consul service "
                                  "discovery bridge with a cluster.local DNS server.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", metavar="FILE", help="YAML settings file")
    _add_setting_flags(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("--config", metavar="FILE", help="YAML settings file")
    _add_setting_flags(check)
    check.set_defaults(func=cmd_check_config)

    purge = sub.add_parser("purge", help="list (and with --yes delete) what a cluster's bridge "
                           "left in Consul and, with sync.to_k8s, in Kubernetes")
    purge.add_argument("--config", metavar="FILE", help="YAML settings file (as `run` has it)")
    _add_setting_flags(purge, only=("--kubeconfig", "--context", "--consul-addr", "--cluster-id",
                                    "--log-level", "--log-format"))
    purge.add_argument("--yes", action="store_true", help="delete; without it nothing changes")
    purge.set_defaults(func=cmd_purge)

    demo = sub.add_parser("demo", help="run the bridge against embedded test servers")
    demo.add_argument("--dns-listen", default="127.0.0.1:5353", type=_listen_arg)
    demo.add_argument("--http-listen", default="127.0.0.1:0", type=_listen_arg)
    demo.add_argument("--k8s-listen", default="127.0.0.1:0", type=_listen_arg)
    demo.add_argument("--consul-listen", default="127.0.0.1:0", type=_listen_arg)
    demo.add_argument("--log-level", default="info")
    demo.add_argument("--log-format", default="text")
    demo.set_defaults(func=cmd_demo)

    explain = sub.add_parser(
        "explain", help="why a name answers what it does, from a running bridge",
        description="Ask a running bridge (its HTTP listener) what DNS answers for NAME and "
                    "why: each instance with its origin, those left out and why, the Consul "
                    "registrations the bridge owns for it, and when each source last changed. "
                    "NAME is a DNS name (php-apache-svc.default.svc.cluster.local), a Consul "
                    "service name, or NAMESPACE/SERVICE. Exits 0 when the bridge knows the "
                    f"name, {EXPLAIN_UNKNOWN} when it does not (it says why), 1 when it cannot ask.")
    explain.add_argument("name", metavar="NAME")
    explain.add_argument("--server", default="127.0.0.1:8080", type=_listen_arg, metavar="HOST:PORT",
                         help="the bridge's http.listen address (default 127.0.0.1:8080)")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain.add_argument("--timeout", type=_seconds_arg, default=10.0, help=argparse.SUPPRESS)
    explain.set_defaults(func=cmd_explain)

    k8s = sub.add_parser("fake-k8s", help="the Kubernetes API test server")
    k8s.add_argument("--listen", default="127.0.0.1:0", type=_listen_arg)
    k8s.add_argument("--load", action="append", default=[], metavar="FILE",
                     help="multi-document YAML manifests to apply (repeatable)")
    k8s.add_argument("--write-kubeconfig", metavar="PATH",
                     help="write a kubeconfig for the server (with --tls: its CA and a system:masters admin)")
    k8s.add_argument("--tls", action="store_true",
                     help="serve HTTPS with a CA made at start; require bearer tokens; authorize with RBAC")
    k8s.add_argument("--write-serviceaccount", metavar="DIR",
                     help="write token, ca.crt and namespace for --serviceaccount as the kubelet does (needs --tls)")
    k8s.add_argument("--serviceaccount", metavar="NAMESPACE/NAME", type=_serviceaccount_arg,
                     help="the service account whose token --write-serviceaccount writes")
    k8s.add_argument("--token-grace", metavar="SECONDS", type=_seconds_arg, default=10.0,
                     help="how long a rotated-out token keeps working (default 10; 0 refuses it at once)")
    k8s.set_defaults(func=cmd_fake_k8s)

    fc = sub.add_parser("fake-consul", help="the Consul HTTP API test server")
    fc.add_argument("--listen", default="127.0.0.1:0", type=_listen_arg)
    fc.add_argument("--load", action="append", default=[], metavar="FILE",
                    help="YAML or JSON list of catalog register bodies (repeatable)")
    fc.add_argument("--tls", action="store_true", help="serve HTTPS with a CA made at start")
    fc.add_argument("--verify-incoming", action="store_true",
                    help="require a client certificate signed by that CA (Consul's verify_incoming)")
    fc.add_argument("--write-tls", metavar="DIR", help="write ca.pem, client.pem and client-key.pem into DIR")
    fc.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                    help="a name for the server certificate, instead of server.<dc>.consul, localhost "
                         "and the loopback addresses (repeatable)")
    fc.add_argument("--acl-initial-management-token", metavar="TOKEN",
                    help="turn ACLs on with this management token (Consul's acl.tokens.initial_management)")
    fc.add_argument("--acl-default-policy", choices=("allow", "deny"), default="deny",
                    help="with ACLs on: what a request no rule covers gets (default deny)")
    fc.add_argument("--http-max-conns-per-client", type=int, default=200, metavar="N",
                    help="open connections from one IP address beyond which a new one gets a 429 "
                         "(Consul's limits.http_max_conns_per_client, default 200; 0: no limit)")
    fc.set_defaults(func=cmd_fake_consul)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # the process itself: the console script
        _end_process(code)
    return code


def _end_process(code: int) -> None:
    """Ends the process without interpreter finalization.

    By now every command has stopped what it started, in order. What may remain are daemon
    threads blocked in a library call (a Kubernetes list in flight, a forwarder's socket);
    CPython's finalization can abort the process (SIGABRT) when such a thread holds a lock
    it needs, such as stderr's. Nothing is left to clean up that the kernel does not.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    _install_signal_handlers()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except (BridgeError, OSError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
