from lpld_cli.cli import main

main()
