#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""PRECOPY_INFOv2 and re-opened initial data between two real vfiomigd (proto/stream-protocol.md
§2.6), with simulated devices:

* a device that reports new initial data (VFIO_PRECOPY_INFO_REINIT, the sim's `reinit` option)
  after the destination loaded its first round: the source job stops calling the initial data
  loaded, a Switchover() waits for the destination's second acknowledgement, both jobs count the
  round (InitialDataReinits) and the destination ends with the source's state (StateDigest);
* a device whose driver refuses the PRECOPY_INFOv2 opt-in (`precopy-v2` false): PrecopyInfo says
  v1, the daemon logs the refusal once, and the migration is a plain one;
* the minor-version negotiation against a raw 2.0 and 2.1 source.

Timing: a bandwidth limit makes each round of 4 MiB of initial data take about half a second,
which is the margin for observing the wait; no figure is asserted on it.
"""

import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h  # noqa: E402
import stream_wire  # noqa: E402
from test_migration import (DEVICE_IFACE, MIGRATION_IFACE, P2P, PRE, SC, MiB, PairCase,  # noqa: E402
                            RawSource)


def lines_matching(log, *patterns):
    """The log's lines matching each pattern, in log order, as (index, pattern number) pairs."""
    out = []
    for i, line in enumerate(log.splitlines()):
        for k, p in enumerate(patterns):
            if re.search(p, line):
                out.append((i, k))
    return out


class Reinit(PairCase):

    def test_reinit_waits_for_the_second_acknowledgement(self):
        # 4 MiB of initial data; after 5 MiB of pre-copy (the first round and some dirty data) the
        # device reconfigures itself and reports REINIT
        ps, pd = self.pair(8 * MiB, (SC, P2P, PRE),
                           src_opts={"precopy_size": 4 * MiB, "dirty_rate": 1 * MiB, "reinit": 5 * MiB})
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "PrecopyInfo"), "v2")
        self.assertEqual(self.dst.prop(pd, DEVICE_IFACE, "PrecopyInfo"), "v2")
        src_log_start = len(self.src.daemon.log())
        djob, token, addresses = self.dst.prepare([pd])
        sjob = self.src.start_migration([ps], addresses[0], token, channels=2, switchover="manual",
                                        **{"bandwidth-limit": 8 * MiB})
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataLoaded", bool, timeout=20, what="the first round")
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "InitialDataReinits"), 0)
        self.src.wait_prop(sjob, MIGRATION_IFACE, "InitialDataReinits", lambda v: v == 1, timeout=20,
                           what="the device's REINIT")
        s = self.src.job(sjob)
        self.assertFalse(s["InitialDataLoaded"], f"4 MiB of new initial data at 8 MiB/s, not loaded yet: {s}")
        self.src.call(sjob, MIGRATION_IFACE, "Switchover")
        s = self.src.job(sjob)
        self.assertEqual(s["Phase"], "precopy", f"Switchover() waits for the second round: {s}")
        self.assertTrue(s["SwitchoverRequested"])
        self.assertEqual(self.src.wait_final(sjob), "completed", self.src.job(sjob))
        self.assertEqual(self.dst.wait_final(djob), "completed", self.dst.job(djob))
        self.assertMigrated([ps], [pd], {ps: self.src.digest(ps)})
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "InitialDataReinits"), 1)
        self.assertEqual(self.dst.prop(djob, MIGRATION_IFACE, "InitialDataReinits"), 1,
                         "the destination re-opened the round and loaded it")
        # The order, in the source's log: loaded (round 1), REINIT, loaded (round 2), switchover.
        log = self.src.daemon.log()[src_log_start:]
        seq = [k for _i, k in lines_matching(log, r"the destination loaded the initial data of",
                                             r"reported new initial data \(REINIT\).*the switchover waits",
                                             r"switching over")]
        self.assertEqual(seq, [0, 1, 0, 2], f"the source's log:\n{log}")
        self.assertIn("re-opened the initial data", self.dst.daemon.log())

    def test_driver_refuses_precopy_info_v2(self):
        ps, pd = self.pair(4 * MiB, (SC, P2P, PRE),
                           src_opts={"precopy_size": 2 * MiB, "reinit": 1 * MiB, "precopy_v2": False})
        self.assertEqual(self.src.prop(ps, DEVICE_IFACE, "PrecopyInfo"), "v1")
        refusals = [line for line in self.src.daemon.log().splitlines()
                    if f"{self.src.prop(ps, DEVICE_IFACE, 'Id')[4:]}: PRECOPY_INFOv2 refused" in line]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("PRECOPY_INFOv2 refused by the driver (EINVAL: Invalid argument): using PRECOPY_INFO.",
                      refusals[0])
        plain = self.src.attach(size=1 * MiB, flags=(SC, P2P))
        self.assertEqual(self.src.prop(plain, DEVICE_IFACE, "PrecopyInfo"), "", "no pre-copy, no precopy info")
        sjob, djob, _took = self.migrate([ps], [pd], start={"channels": 1}, timeout=30)
        self.assertMigrated([ps], [pd], {ps: self.src.digest(ps)})
        self.assertEqual(self.src.prop(sjob, MIGRATION_IFACE, "InitialDataReinits"), 0,
                         "v1 cannot report REINIT: the reconfigured blocks were dirty data")
        self.assertEqual(self.dst.prop(djob, MIGRATION_IFACE, "InitialDataReinits"), 0)


class Versions(PairCase):
    """The destination answers the lower of the minors; a 2.0 source gets 2.0."""

    def test_minor_negotiation(self):
        dev = self.dst.attach(size=1 * MiB, flags=(SC, P2P, PRE))
        record = {"flags": 7, "state_size": 1 * MiB, "driver": self.dst.prop(dev, DEVICE_IFACE, "Driver")}
        for offered, answered in ((0, 0), (stream_wire.MINOR_REINIT, 1), (7, 1)):
            with self.subTest(offered=offered):
                job, token, addresses = self.dst.prepare([dev])
                src = RawSource(addresses[0])
                self.addCleanup(src.close)
                w = src.handshake(stream_wire.hello(bytes.fromhex(token), [record], minor=offered))
                self.assertEqual(w["status"], 0, w)
                self.assertEqual((w["major"], w["minor"]), (2, answered), w)
                self.dst.wait_phase(job, "precopy")
                self.dst.call(job, MIGRATION_IFACE, "Cancel")
                self.assertEqual(self.dst.wait_final(job), "cancelled")
                src.close()


if __name__ == "__main__":
    h.main([h.require_root, lambda: h.require_programs("dbus-daemon", "busctl"), h.require_daemon,
            lambda: h.require_files(h.BUS_POLICY)])
