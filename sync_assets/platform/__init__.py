"""The platform database: schema, migrations, data access and the demo catalogue."""
