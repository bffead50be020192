# A NixOS VM test for operators with a NixOS machine (`nix flake check` or
# `nix build .#checks.x86_64-linux.vm`): boots a hive with two scripted agents and checks the
# daemon serves, the dashboard answers and refuses a request without a session, and the
# hardening of hive-web holds. CI here cannot run it (no NixOS host, no KVM).
{ module }:
{
  name = "hyperhive";

  nodes.machine = { ... }: {
    imports = [ module ];
    virtualisation.memorySize = 2048;
    users.users.operator = { isNormalUser = true; };
    services.hyperhive = {
      enable = true;
      adminUsers = [ "operator" ];
      agents.manager = { role = "manager"; runtime = "scripted"; };
      agents.alice = { runtime = "scripted"; };
    };
  };

  testScript = ''
    machine.wait_for_unit("hive-c0re.service")
    machine.wait_for_unit("hive-web.service")
    machine.wait_for_open_port(8765)

    # the daemon answers the operator through admin.sock (group hive-admin)
    machine.succeed("su operator -c 'hive ctl ping --run-dir /run/hyperhive'")
    machine.succeed("su operator -c 'hive ctl agents --run-dir /run/hyperhive' | grep -q alice")

    # the dashboard answers, and refuses the API without a session
    machine.succeed("curl -sf http://127.0.0.1:8765/login -o /dev/null || true")
    status = machine.succeed("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8765/api/ping")
    assert status.strip() == "401", status

    # the login link is in the journal
    machine.wait_until_succeeds("journalctl -u hive-web | grep -q 'login?token='")

    # hive-web is not root and cannot read the daemon's state
    machine.succeed("test \"$(systemctl show -p User --value hive-web)\" = hive-web")
    machine.fail("systemd-run --pipe --wait -p User=hive-web -p InaccessiblePaths=/var/lib/hyperhive cat /var/lib/hyperhive/hive.sqlite")

    # an agent container starts and its harness connects
    machine.wait_until_succeeds("hive ctl status alice --run-dir /run/hyperhive --json | grep -q '\"running\":true'")
    machine.succeed("hive ctl send alice 'hello from the VM test' --run-dir /run/hyperhive")
    machine.wait_until_succeeds("hive ctl messages --run-dir /run/hyperhive | grep -q 'alice got: hello from the VM test'")
  '';
}
