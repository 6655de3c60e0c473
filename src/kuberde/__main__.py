from kuberde.cli.main import main

main()
