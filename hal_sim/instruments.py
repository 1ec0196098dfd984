"""The simulated instrument kinds a bench file can name (see :mod:`qnode.hal_sim.bench`).

Each maps to its twin class (imported only when used) and the transports its real counterpart
uses: "pty" for serial instruments, "tcp" for instruments on a TCP socket (a serial instrument
may also be served on TCP, reached with a ``socket://`` URL, which survives restarts).
"""
from __future__ import annotations

from .bench import register

register("elliptec", "qnode.hal_sim.elliptec:ElliptecTwin", ("pty", "tcp"),
         "Thorlabs Elliptec ELL14 rotation mount (waveplate)")
register("tc200", "qnode.hal_sim.tc200:TC200Twin", ("pty", "tcp"),
         "Thorlabs TC200 temperature controller (SPDC crystal oven)")
register("ibeam", "qnode.hal_sim.ibeam:IBeamSmartTwin", ("pty", "tcp"),
         "Toptica iBeam smart pump laser")
register("itc4001", "qnode.hal_sim.itc4001:Itc4001Sim", ("tcp",),
         "Thorlabs ITC4001 laser-diode/TEC controller (SCPI; reach it as "
         "TCPIP::127.0.0.1::<port>::SOCKET)")
