"""The batchq status site (Flask): see web.app for the factory and the configuration."""
