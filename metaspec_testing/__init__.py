"""Test support for metaspec: the operator against an emulated Kubernetes API, fault trials, model fixtures.

Not part of any image: `pip install 'metaspec[testing]'` brings what it needs (kmock, jsonpatch, httpx),
the way `kopf.testing` ships next to kopf for the tests of the projects that use it.
"""
