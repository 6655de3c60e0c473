from kuberde.cli.entry import main

main()
