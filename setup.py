"""qnode: the node daemon of a photonic quantum network.

The design card fixes the top-level folders (daemon/ drivers/ native/ hal_sim/);
``package_dir`` maps them into the ``qnode`` import namespace, which is a PEP 420 namespace
package (there is no ``qnode/__init__.py``). The cffi extension ``qnode.native._qcore`` is built
from ``native/qcore.c`` for both ``pip install .`` and ``pip install -e .``.
"""
from pathlib import Path

from setuptools import find_packages, setup

SUBPACKAGES = {
    "qnode.native": "native",
    "qnode.hal_sim": "hal_sim",
    "qnode.drivers": "drivers",
    "qnode.daemon": "daemon",
    "qnode.client": "client",
}

# every subpackage of the mapped folders (daemon/quantum -> qnode.daemon.quantum, ...)
PACKAGES = [*SUBPACKAGES] + [f"{name}.{sub}" for name, folder in SUBPACKAGES.items()
                             for sub in find_packages(folder)]

setup(
    name="qnode",
    version="0.1.0",
    description=("Node daemon for photonic quantum networks: instruments, coincidence core, "
                 "MQTT heralding"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir=SUBPACKAGES,
    package_data={"qnode.native": ["qcore.c", "qcore.h"],
                  "qnode.hal_sim": ["benches/*.toml", "sims/*.yaml"]},
    # the broker, bridge and unit files an operator installs (qnode bridge-config reads the
    # bridge file from here when qnode is not run from a checkout)
    data_files=[("share/qnode/systemd", sorted(str(p) for p in Path("systemd").iterdir()
                                               if p.is_file()))],
    setup_requires=["cffi>=1.16"],
    cffi_modules=["native/build_qcore.py:ffibuilder"],
    install_requires=[
        "cffi>=1.16",
        "numpy>=1.24",
        "pyserial>=3.5",      # serial instruments (and pty / socket:// URLs under hal_sim)
        "pyvisa>=1.13",       # SCPI instruments over VISA
        "pyvisa-py>=0.7",     # a pure-Python VISA backend, so no vendor VISA is needed
        "pyzmq>=25",          # ID Quantique time controllers speak SCPI over ZeroMQ
        "ptufile>=2024.1",    # PicoQuant PTU files (the field's maintained reader/writer)
        "aiomqtt>=2.0",       # MQTT for the daemon: the maintained successor of asyncio-mqtt
        "prometheus-client>=0.20",  # the Prometheus project's own client: the metrics endpoint
        "cryptography>=42",   # Ed25519 identity keys (node signatures): PyCA's OpenSSL binding
        # the application protocol's messages are JSON Schemas (validation, the AsyncAPI
        # document, the docs' tables): the reference validator of the JSON Schema project
        "jsonschema>=4.18",
        # sparse parity-check matrices of the key post-processing's LDPC codes
        "scipy>=1.10",
        # ETSI GS QKD 014 key delivery: the established asyncio HTTP server (and client), with
        # TLS from the standard library's ssl
        "aiohttp>=3.9",
        # routing over the advertised topology (k loop-free routes by Yen's algorithm): the
        # field's graph library, also what SeQUeNCe's routing uses
        "networkx>=3.1",
    ],
    extras_require={
        # `qnode demo`: an embedded MQTT broker and the report's plots
        "demo": ["amqtt>=0.11", "matplotlib>=3.7"],
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "hypothesis>=6.100",
            "pyvisa-sim>=0.7",  # VISA drivers against pyvisa-sim YAML (the @sim backend)
            # the independent truth of the C core's LDPC decoder (tests/native/
            # test_ldpc_decoder.py): the maintained BP/OSD decoder library (Roffe et al.), ~25x
            # too slow per frame for key post-processing itself
            "ldpc>=2.3",
            "amqtt>=0.11",      # the demo runs in the suite
            "matplotlib>=3.7",
            # static checks run by tests/static_checks.sh: ruff (the linter the code is kept to)
            # and mypy with the stubs it needs for cffi
            "ruff>=0.6",
            "mypy>=1.10",
            "types-cffi>=1.16",
            "types-pyserial>=3.5",
            "types-jsonschema>=4.18",
            "types-networkx>=3.1",
            # the import rules (.importlinter): rooms import downwards, pure rooms stay pure;
            # grimp (its graph library) also serves tests/check_architecture.py
            "import-linter>=2.1",
            # the docs (docs/, mkdocs.yml): tests/static_checks.sh runs `mkdocs build --strict`
            # with the Material theme; mkdocs >= 1.6 checks the links' anchors too
            "mkdocs-material>=9.5",
            "mkdocs>=1.6",
        ],
    },
    entry_points={"console_scripts": ["qnode = qnode.daemon.cli:main"]},
    zip_safe=False,
)
