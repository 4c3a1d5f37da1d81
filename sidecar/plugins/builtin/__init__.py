"""Built-in plugins, registered by the plugin manager exactly like entry-point plugins."""
