# Loss against position; run `gnuplot plot.gp` in this folder.
set terminal pngcairo size 900,560 noenhanced
set output 'loss_by_position.png'
set title 'Loss by token index (as in Figure 6 of the paper) over 48 held-out documents'
set xlabel 'context: tokens seen, bos included'
set ylabel 'mean NLL (nats)'
set logscale x 2
set grid
set key top right
set datafile missing 'NaN'
set xrange [1:*]
set arrow from 2048, graph 0 to 2048, graph 1 nohead dashtype 2
set label 'window' at 2048, graph 0.95 offset 0.5,0
set arrow from graph 0, first 5.99849 to graph 1, first 5.99849 nohead dashtype 3
set label 'unigram' at graph 0.01, first 5.99849 offset 0,0.6
plot 'curve.dat' using 1:2 with lines linewidth 2 title 'swa', \
    'curve.dat' using 1:3 with lines linewidth 2 title 'fa', \
    'curve.dat' using 1:4 with lines linewidth 2 title 'ttt-e2e'
