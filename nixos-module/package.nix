# hyperhive as a Nix package, built from this source tree.
{ lib, python3Packages, git, bubblewrap, util-linux }:

python3Packages.buildPythonApplication {
  pname = "hyperhive";
  version = "0.1.0";
  pyproject = true;
  src = lib.cleanSource ./..;

  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [
    trio
    anyio
    msgspec
    sqlite-utils
    typer
    starlette
    uvicorn
    jinja2
    itsdangerous
    mcp
  ];

  # the daemon runs git for the meta repo, bwrap and setpriv for the bwrap backend
  makeWrapperArgs = [ "--prefix" "PATH" ":" (lib.makeBinPath [ git bubblewrap util-linux ]) ];

  # the test suite needs root, bubblewrap and a browser: run it with ./test.sh, not in the sandbox
  doCheck = false;

  meta = {
    description = "A host for a swarm of AI coding agents, with a privileged daemon and an unprivileged dashboard";
    license = lib.licenses.mit;
    mainProgram = "hive";
  };
}
