from setuptools import find_packages, setup

setup(
    name="labo_fairseq",
    version="0.1.0",
    description="LABO label regularization (Lu et al., Findings of ACL 2023) as a fairseq criterion",
    packages=find_packages(include=["labo_fairseq", "labo_fairseq.*"]),
    python_requires=">=3.10",
    # fairseq itself is installed by scripts/setup_env.sh (patched sdist); torch must stay the
    # build already installed, so neither is listed here.
    install_requires=[],
)
