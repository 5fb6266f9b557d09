from mdp_core.cli import main

main()
