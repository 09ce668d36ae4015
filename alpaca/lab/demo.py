"""``alpaca-tunnel lab demo`` (``make demo``): the default lab in under a minute.

Steps: build the lab and start every daemon; ping the internet host from the client through
the tunnel; a 5 s iperf3 TCP transfer; 10 % loss on uplink A; ``ping -c 200 -i 0.01`` with the
end-to-end loss next to the client's per-path figures from its metrics; ``alpaca-tunnel show``
on the client; tear down. Each step says what it does; a failed step stops the demo with exit
code 1; the lab is always torn down. Output goes to stdout (this is a CLI command).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from alpaca.errors import AlpacaError
from alpaca.lab import DEFAULT_STATE_DIR, Lab, impair, netns
from alpaca.lab.nodes import PROBE_INTERVAL_MS
from alpaca.lab.topology import load_topology

_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) received")


class StepFailed(AlpacaError):
    """A demo step did not produce what it should."""


def ping_loss(output: str) -> tuple[int, int]:
    """(sent, received) from ping's summary line."""
    match = _LOSS.search(output)
    if not match:
        raise StepFailed(f"no ping summary in: {output.strip()[-200:]}")
    return int(match[1]), int(match[2])


def counter_deltas(before: str, after: str, words: tuple[str, ...]) -> list[str]:
    """``name{labels} +n`` for each counter whose name contains one of ``words`` and that grew
    between two Prometheus text pages (what happened during a step, not since the start)."""
    old, new = parse_metrics(before), parse_metrics(after)
    return [f"{name}{{{labels}}} +{value - old.get((name, labels), 0.0):g}"
            for (name, labels), value in sorted(new.items())
            if any(w in name for w in words) and value > old.get((name, labels), 0.0)]


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """{(metric name, label text): value} of a Prometheus text page."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        try:
            out[(name, labels.rstrip("}"))] = float(value)
        except ValueError:
            continue
    return out


def path_probe_loss(before: str, after: str) -> list[tuple[str, int, int]]:
    """(path labels, probes sent, probes unanswered) per path between two scrapes."""
    old, new = parse_metrics(before), parse_metrics(after)
    rows = []
    for (name, labels), sent in sorted(new.items()):
        if name != "alpaca_path_probes_sent_total":
            continue
        sent_delta = sent - old.get((name, labels), 0.0)
        key = ("alpaca_path_probes_answered_total", labels)
        answered = new.get(key, 0.0) - old.get(key, 0.0)
        rows.append((labels, int(sent_delta), int(max(sent_delta - answered, 0))))
    return rows


def iperf(lab: Lab, client: str, server: str, address: str, seconds: int = 5,
          extra: tuple[str, ...] = ()) -> float:
    """A TCP transfer with iperf3 from ``client`` to ``server``; returns Mbit/s received."""
    srv = subprocess.Popen(["ip", "netns", "exec", lab.node(server).namespace, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = lab.exec(client, ["iperf3", "-c", address, "-t", str(seconds), "-J", *extra],
                       check=False, timeout=seconds + 20)
        data = json.loads(out.stdout or "{}")
        if "error" in data or "end" not in data:
            raise StepFailed(f"iperf3 failed: {data.get('error', out.stderr.strip())}")
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        srv.kill()
        srv.wait()


class Demo:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        topo = lab.topology
        self.client = next(n.name for n in topo.daemons if n.role.value == "client")
        self.inet = topo.internet
        self.inet_address = str(topo.endpoints_of(self.inet)[0][1].address.ip)
        self.uplink = next(link.name for link, _ in topo.endpoints_of(self.client))

    def step(self, number: int, text: str, action: Callable[[], None]) -> None:
        print(f"\n[{number}] {text}", flush=True)
        started = time.monotonic()
        action()
        print(f"    ok ({time.monotonic() - started:.1f} s)", flush=True)

    def scrape(self) -> str:
        try:
            return self.lab.scrape(self.client)
        except OSError as exc:
            raise StepFailed(f"cannot scrape {self.lab.metrics_url(self.client)}: {exc}") from exc

    def up(self) -> None:
        self.lab.up()
        print("\n".join("    " + line for line in self.lab.status()[1:]))

    def ping(self) -> None:
        out = self.lab.exec(self.client, ["ping", "-c", "3", "-i", "0.2", "-W", "2", self.inet_address],
                            check=False)
        sent, got = ping_loss(out.stdout)
        print(f"    {self.client} -> {self.inet} ({self.inet_address}): {got}/{sent} replies")
        if got == 0:
            raise StepFailed("no reply through the tunnel")

    def transfer(self) -> None:
        rate = iperf(self.lab, self.client, self.inet, self.inet_address)
        print(f"    iperf3 TCP {self.client} -> {self.inet}: {rate:.0f} Mbit/s")
        # A path's data loss is counted from the probe replies of the next rounds: wait for
        # them, or the transfer's losses would show in the next step's figures.
        time.sleep(3 * PROBE_INTERVAL_MS / 1000)

    def loss(self) -> None:
        impair.impair(self.lab.topology, self.lab.state_dir, self.uplink, loss_pct=10)
        print(f"    link {self.uplink}: 10 % loss in each direction (nftables, receiving side)")

    def lossy_ping(self) -> None:
        before = self.scrape()
        out = self.lab.exec(self.client, ["ping", "-q", "-c", "200", "-i", "0.01", "-W", "1",
                                          self.inet_address], check=False, timeout=60)
        sent, got = ping_loss(out.stdout)
        print(f"    end-to-end: {sent - got}/{sent} lost ({100 * (sent - got) / sent:.1f} %)")
        time.sleep(1.0)  # one more probe round on every path
        after = self.scrape()
        print(f"    per path, probes during this step ({self.lab.metrics_url(self.client)}):")
        for labels, sent, lost in path_probe_loss(before, after):
            if sent:
                print(f"      {labels:<36} {lost}/{sent} probes unanswered")
        for line in counter_deltas(before, after, ("lost", "dup_copies")):
            print(f"      {line}")

    def show(self) -> None:
        cmd = [sys.executable, "-m", "alpaca", "show", "--socket", str(self.lab.control_socket(self.client))]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        print("\n".join("    " + line for line in (out.stdout + out.stderr).splitlines()))
        if out.returncode != 0:
            raise StepFailed(f"alpaca-tunnel show exited with {out.returncode}")


def run_demo(state_dir: Path = DEFAULT_STATE_DIR) -> int:
    """Run every step; returns the exit code. Always tears the lab down."""
    lab = Lab(load_topology(), state_dir)
    demo = Demo(lab)
    started = time.monotonic()
    if set(lab.created_names()[0]) & set(netns.list_namespaces()) or (state_dir / "lab.json").exists():
        print("[0] a lab is up (an earlier run's?): tearing it down first", flush=True)
        lab.down()
    try:
        demo.step(1, "building the lab and starting a daemon per node", demo.up)
        demo.step(2, f"ping {demo.inet} from {demo.client} through the tunnel (server NAT)", demo.ping)
        demo.step(3, "iperf3: 5 s TCP transfer through the tunnel", demo.transfer)
        demo.step(4, f"10 % loss on uplink {demo.uplink}", demo.loss)
        demo.step(5, "ping -c 200 -i 0.01 with the loss: end-to-end vs per-path", demo.lossy_ping)
        demo.step(6, f"alpaca-tunnel show on {demo.client}", demo.show)
    except AlpacaError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\n[7] tearing the lab down", flush=True)
        lab.down()
    print(f"\ndemo done in {time.monotonic() - started:.0f} s")
    return 0
