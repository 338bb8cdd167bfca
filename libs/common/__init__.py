"""Code shared by every mailbus service: configuration, bus names, events, clients, runtime.

Services never import each other; whatever two services must agree on lives here.
"""
