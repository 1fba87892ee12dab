"""Runs an Argo CD health-check Lua script (docs/gitops/argocd-health.lua) on objects, the way
Argo CD does: the object as the global `obj`, the script's returned table as the health.

  argocd_health.py SCRIPT < [obj, ...]  -> [{"status": ..., "message": ...}, ...]
"""
import json
import sys

import lupa


def main(argv):
    script = open(argv[1]).read()
    objects = json.load(sys.stdin)
    out = []
    for obj in objects:
        lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = lua.table_from(obj, recursive=True)
        hs = lua.execute(script)
        out.append({"status": hs["status"], "message": hs["message"]})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
