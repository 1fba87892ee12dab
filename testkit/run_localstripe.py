"""localstripe (a fake Stripe) on 127.0.0.1:PORT, in memory.

Its own entry point binds every interface and pickles its store to /tmp/localstripe.pickle on
each write (so parallel tests would share a file); the tests need neither.
"""
import sys

from aiohttp import web
from localstripe import resources
from localstripe.server import app

resources.Store.dump_to_disk = lambda self: None
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
