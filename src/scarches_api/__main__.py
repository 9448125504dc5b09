from scarches_api.cli import app

app(prog_name="scarches-api")
