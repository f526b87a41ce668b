"""Where the web and the worker meet: key names, wire codec, record formats, configuration.

Neither side imports the other; both import this package (and the pure ``engine``).
"""
