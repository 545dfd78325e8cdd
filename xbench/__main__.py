from xbench.apps.run import main

main()
